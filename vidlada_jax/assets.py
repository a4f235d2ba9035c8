"""Files that ship with the repository (not with an installed package): the trained demo
checkpoint and its bundled clips.

    assets/demo-vidlada/     the small VidLaDA trained on synthetic_video_qa by configs/demo.py
                             (a vidlada-jax checkpoint with tokenizer.json; see its PROVENANCE.md)
    assets/clips/*.mp4       test-split clips of synthetic_video_qa, with clips.json holding each
                             clip's question, options and answer
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / 'assets'
DEMO_CHECKPOINT = ROOT / 'demo-vidlada'
CLIPS = ROOT / 'clips'


def demo_clips() -> list[dict]:
  """The bundled clips: [{"id", "video" (absolute path), "question", "options", "answer",
  "answer_letter", "question_type", "format"}], as listed in assets/clips/clips.json."""
  if not (CLIPS / 'clips.json').is_file():
    raise FileNotFoundError(f'the bundled clips are not at {CLIPS}: they ship with the '
                            'repository (assets/), not with an installed package')
  records = json.loads((CLIPS / 'clips.json').read_text())
  return [dict(record, video=str(CLIPS / record['video'])) for record in records]
