"""Plot and tabulate MARS-Cache's accuracy and speed on a trained model, from
`vidlada_jax.launch.evaluate`.

    python -m vidlada_jax.launch.evaluate \\
        --cache none,mars-exact,mars-refresh,mars-chunk,mars-anchors,mars,dual \\
        --split test --json > outputs/mars_demo.json
    python -m vidlada_jax.launch.plot_mars outputs/mars_demo.json --png docs/mars_demo.png

Prints a Markdown table (one row per policy: accuracy, its change from plain decoding, token
agreement with plain decoding, tokens/s and speedup) and draws accuracy against speedup, one point
a policy, as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidlada_jax import policies as cache_policies

# The table's labels: the policies' own descriptions, the default in bold.
DESCRIPTIONS = {**cache_policies.DESCRIPTIONS,
                'mars': f"**{cache_policies.DESCRIPTIONS['mars']}**"}


def table(policies: dict[str, dict]) -> str:
  plain = policies['none']
  lines = ['| policy | accuracy | vs plain | token agreement | tokens/s | speedup |',
           '|---|---|---|---|---|---|']
  for name, entry in policies.items():
    agreement = entry.get('token_agreement_with_none')
    speedup = entry.get('speedup_vs_none')
    lines.append(
        f'| {DESCRIPTIONS.get(name, name)} (`{name}`) | {100 * entry["accuracy"]:.1f}% | '
        f'{100 * (entry["accuracy"] - plain["accuracy"]):+.1f} pt | '
        f'{"-" if agreement is None else f"{100 * agreement:.1f}%"} | '
        f'{entry["tokens_per_s"]:.1f} | {"-" if speedup is None else f"{speedup:.2f}x"} |')
  return '\n'.join(lines)


def plot(policies: dict[str, dict], png: Path, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  for name, entry in policies.items():
    speedup = entry.get('speedup_vs_none') or 1.0
    accuracy = 100 * entry['accuracy']
    axis.scatter(speedup, accuracy, s=60 if name == 'mars' else 30,
                 color='tab:red' if name == 'mars' else 'tab:blue', zorder=3)
    axis.annotate(name, (speedup, accuracy), textcoords='offset points', xytext=(5, 4),
                  fontsize=8)
  plain = 100 * policies['none']['accuracy']
  axis.axhline(plain - 1, color='grey', linestyle=':', linewidth=1)
  axis.text(1.0, plain - 1, ' plain - 1 pt', va='top', fontsize=7, color='grey')
  axis.set_xscale('log', base=2)
  axis.set_xlabel('speedup over plain decoding (tokens/s ratio, log scale)')
  axis.set_ylabel('test accuracy (%)')
  axis.set_title(title, fontsize=9)
  axis.grid(True, which='both', alpha=0.3)
  figure.tight_layout()
  png.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(png)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.plot_mars',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('results', help='the JSON vidlada_jax.launch.evaluate --json printed')
  parser.add_argument('--png', default='docs/mars_demo.png')
  args = parser.parse_args(argv)
  results = json.loads(Path(args.results).read_text())
  policies = results.get('policies') or {}
  if 'none' not in policies or len(policies) < 2:
    print('error: the results need plain decoding (none) and at least one other policy '
          '(vidlada_jax.launch.evaluate --cache none,mars,...)', file=sys.stderr)
    return 2
  print(table(policies))
  settings = results.get('settings', {})
  title = (f'{results.get("task")}/{results.get("config")} {results.get("split")}, '
           f'{policies["none"]["items"]} items, {settings.get("frames")} frames, '
           f'gen {settings.get("gen_length")} / steps {settings.get("steps")}')
  plot(policies, Path(args.png), title)
  print(f'\nplot -> {args.png}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
