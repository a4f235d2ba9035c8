"""Package a trained demo model and its bundled clips into `assets/` (how they were made).

    python -m vidlada_jax.launch.train --config configs/demo.py:stage=tower \
        --workdir /tmp/demo-tower
    python -m vidlada_jax.launch.train --config configs/demo.py:init=/tmp/demo-tower \
        --workdir /tmp/demo
    python -m vidlada_jax.launch.evaluate --checkpoint /tmp/demo \
        --split test --json > /tmp/demo_eval.json
    python -m vidlada_jax.launch.package_demo --tower-workdir /tmp/demo-tower --workdir /tmp/demo \
        --evaluation /tmp/demo_eval.json

(`make demo-model` runs all four.)

Writes `assets/demo-vidlada/` (the work directory's latest weights as a vidlada-jax checkpoint,
without optimizer state, with tokenizer.json and PROVENANCE.md: the commands, the commit, each
stage's steps, loss and time, the test accuracy) and `assets/clips/` (the first test clip of
every question type in each format as mp4, listed in clips.json). The checkpoint is written
beside the old one and swapped in only once complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import vidlada_jax as vj
from vidlada_jax import assets
from vidlada_jax import prompting
from vidlada_jax.input_pipeline import synthetic_qa
from vidlada_jax.training import logs

CLIP_FIELDS = ('id', 'question', 'options', 'answer', 'answer_letter', 'question_type', 'format')


FORMATS = ('free_form', 'multiple_choice')


def write_clips(root: Path, config_name: str = 'default') -> list[dict]:
  """The first test example of every question type in each format, as mp4 + clips.json."""
  config = synthetic_qa.named_config(config_name)
  wanted = [(kind, form) for kind in synthetic_qa.QUESTION_TYPES for form in FORMATS]
  first = {}
  for example in synthetic_qa.split_examples(config.seed, 'test', config.split_sizes,
                                             num_frames=config.num_frames, size=config.image_size):
    first.setdefault((example['question_type'], example['format']), example)
    if len(first) == len(wanted):
      break
  examples = [first[pair] for pair in wanted]
  root.mkdir(parents=True, exist_ok=True)
  synthetic_qa.export_videos(examples, root / 'export')
  records = []
  for example in examples:
    video = f'{example["id"]}.mp4'
    shutil.move(root / 'export' / 'videos' / video, root / video)
    records.append(dict({k: example[k] for k in CLIP_FIELDS}, video=video))
  shutil.rmtree(root / 'export')
  (root / 'clips.json').write_text(json.dumps(records, indent=1) + '\n')
  return records


def stage_summary(name: str, workdir: Path) -> list[str]:
  """One stage's steps, batch, final loss (and label errors) and time in train steps."""
  config = json.loads((workdir / 'config.json').read_text())
  metrics = logs.read_metrics(workdir / 'logs')
  if not metrics:
    return [f'- {name}: no metrics logged in {workdir}']
  # Wall time from the config the trainer writes as training starts (after the clip export) to
  # its last metrics line; a resumed run counts its pause too.
  seconds = ((workdir / 'logs' / 'metrics.jsonl').stat().st_mtime
             - (workdir / 'config.json').stat().st_mtime)
  last = metrics[-1]
  errors = f', label errors {last["label_errors"]:.0f}' if 'label_errors' in last else ''
  return [f'- {name}: {last["step"]} steps, global batch {config["train"]["global_batch"]}, '
          f'final loss {last["loss"]:.4f}{errors}, {seconds / 60:.1f} min of training wall time']


def provenance(workdir: Path, evaluation: dict | None, note: str | None = None,
               tower_workdir: Path | None = None) -> str:
  config = json.loads((workdir / 'config.json').read_text())
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip() or 'unknown'
  commands = []
  if tower_workdir:
    commands.append('    python -m vidlada_jax.launch.train --config configs/demo.py:stage=tower '
                    '--workdir /tmp/demo-tower')
    commands.append('    python -m vidlada_jax.launch.train '
                    '--config configs/demo.py:init=/tmp/demo-tower '
                    '--workdir /tmp/demo')
  else:
    commands.append('    python -m vidlada_jax.launch.train '
                    '--config configs/demo.py --workdir /tmp/demo')
  lines = [
      '# The demo model',
      '',
      'A small VidLaDA (architecture `demo`: SigLIP-style tower on 64-px frames in 16-px patches,',
      '6 visual tokens a frame, a 4-layer LLaDA LM of width 128) '
      'trained from random weights on the',
      'train split of synthetic_video_qa (`default`: 16-frame clips) with the repository trainer'
      + (': stage 0 pretrains the tower and projector (cell colours), stage 1 trains the LM on'
         ' the questions with both frozen' if tower_workdir else '') + ':',
      '',
      *commands,
      '    python -m vidlada_jax.launch.evaluate --checkpoint /tmp/demo --split test',
      '',
      '(`make demo-model` runs them and packages the result.)',
      '',
      f'- code: commit {commit}',
      *(stage_summary('stage 0 (tower)', tower_workdir) if tower_workdir else []),
      *stage_summary('stage 1 (questions)' if tower_workdir else 'training', workdir),
      '- training is deterministic on one CPU host (seeded data order, masks and init);',
      '  retraining with the commands above reproduces the weights up to float summation order.',
  ]
  if note:
    lines += ['', note]
  if evaluation:
    lines += ['', f'Test split ({evaluation.get("items")} items): accuracy '
              f'{100 * evaluation["accuracy"]:.1f}%', '']
    lines += [f'- {name}: {100 * value:.1f}%'
              for name, value in sorted(evaluation.get('accuracy_by_type', {}).items())]
  lines += ['', 'Job config of stage 1 (config.json of the run):', '', '```json',
            json.dumps(config, indent=1), '```', '']
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.package_demo',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='the demo training run (stage 1)')
  parser.add_argument('--tower-workdir',
                      help='its stage 0 run (tower pretraining), for PROVENANCE.md')
  parser.add_argument('--evaluation',
                      help='vidlada_jax.launch.evaluate --json output, for PROVENANCE.md')
  parser.add_argument('--note', help='a paragraph for PROVENANCE.md (how the run went)')
  parser.add_argument('--clips-only', action='store_true')
  args = parser.parse_args(argv)

  records = write_clips(assets.CLIPS)
  print(f'{len(records)} clips -> {assets.CLIPS}')
  if args.clips_only:
    return 0
  workdir = Path(args.workdir)
  model = vj.from_pretrained(workdir, progress=False)
  tokenizer = prompting.load_tokenizer(workdir)
  staging = assets.DEMO_CHECKPOINT.with_name(assets.DEMO_CHECKPOINT.name + '.new')
  shutil.rmtree(staging, ignore_errors=True)
  vj.save_checkpoint(model, staging, tokenizer=tokenizer)
  evaluation = json.loads(Path(args.evaluation).read_text()) if args.evaluation else None
  tower_workdir = Path(args.tower_workdir) if args.tower_workdir else None
  (staging / 'PROVENANCE.md').write_text(
      provenance(workdir, evaluation, args.note, tower_workdir=tower_workdir))
  shutil.rmtree(assets.DEMO_CHECKPOINT, ignore_errors=True)
  staging.rename(assets.DEMO_CHECKPOINT)
  size = sum(f.stat().st_size for f in assets.DEMO_CHECKPOINT.rglob('*') if f.is_file())
  print(f'{vj.count_params(model.config):,} parameters ({size / 2**20:.1f} MiB) -> '
        f'{assets.DEMO_CHECKPOINT}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
