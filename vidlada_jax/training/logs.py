"""Training logs: TensorBoard event files and a JSON-lines copy of every logged step.

The event files are written with TensorBoard's own writer (no TensorFlow needed); `metrics.jsonl`
beside them is what scripts and tests read back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """Scalars per step, to `logdir` (TensorBoard) and `logdir/metrics.jsonl`."""

  def __init__(self, logdir: str | Path):
    self.logdir = Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    self._events = EventFileWriter(str(self.logdir))
    self._jsonl = open(self.logdir / 'metrics.jsonl', 'a')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in scalars.items()])
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self._jsonl.write(json.dumps(dict(step=step, **{k: float(v) for k, v in scalars.items()}))
                      + '\n')
    self._jsonl.flush()

  def flush(self) -> None:
    self._events.flush()
    self._jsonl.flush()

  def close(self) -> None:
    self._events.close()
    self._jsonl.close()


def read_metrics(logdir: str | Path) -> list[dict]:
  """Every record of `metrics.jsonl`, in the order written (a resumed run appends)."""
  path = Path(logdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
