"""lmms-eval's command line with the `vidlada_jax` model registered.

    python -m vidlada_jax.lmms --model vidlada_jax --model_args pretrained=CKPT \\
        --tasks videomme --output_path results/

Takes every argument and subcommand `lmms-eval` takes; it only registers the model first, so
it works without the package's `lmms_eval.models` entry point being installed.
"""

from __future__ import annotations

import sys

import vidlada_jax.lmms


def main(argv: list[str] | None = None) -> None:
  vidlada_jax.lmms.register()
  from lmms_eval.cli import dispatch  # pylint: disable=g-import-not-at-top
  # lmms-eval parses sys.argv itself (its eval path re-reads it), so the arguments go there.
  sys.argv = ['lmms-eval', *(sys.argv[1:] if argv is None else argv)]
  dispatch.main()


if __name__ == '__main__':
  main()
