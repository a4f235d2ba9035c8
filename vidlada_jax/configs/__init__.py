"""Job configs (ml_collections files) for `vidlada_jax.launch.train` and `.memory_plan`.

A job names its config file on the command line, `--config configs/stage1.py[:ARGS]`. Where no
such file exists relative to the working directory, the bundled copy in this package is used,
so the documented commands run from any directory and a project's own `configs/` folder wins.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = Path(__file__).resolve().parent


def resolve(spec: str) -> str:
  """`spec` ("FILE[:ARGS]") with FILE replaced by the bundled config of that name when FILE is
  not a file here and names one (`configs/tiny.py`, `tiny.py` or `tiny`)."""
  path, colon, args = spec.partition(':')
  if not path or Path(path).exists():
    return spec
  name = Path(path).name if path.endswith('.py') else f'{Path(path).name}.py'
  bundled = BUNDLED / name
  if (Path(path).parent.name not in ('', 'configs') or not bundled.is_file()
      or name == '__init__.py'):
    return spec
  return f'{bundled}{colon}{args}'


def resolve_flag(argv: list[str], flag: str = 'config') -> list[str]:
  """`argv` with the value of `--FLAG VALUE` / `--FLAG=VALUE` passed through `resolve`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == f'--{flag}' and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
    elif arg.startswith(f'--{flag}='):
      out[i] = f'--{flag}=' + resolve(arg.split('=', 1)[1])
  return out
