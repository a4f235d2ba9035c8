"""VidLaDA (vidlada-jax) as an lmms-eval model, `vidlada_jax`, and the `synthetic_video_qa` task.

Evaluate a checkpoint on any lmms-eval video task, e.g. Video-MME:

    python -m vidlada_jax.lmms --model vidlada_jax \\
        --model_args pretrained=CKPT,max_frames_num=64 --tasks videomme \\
        --batch_size 1 --output_path results/ --log_samples

`python -m vidlada_jax.lmms` is lmms-eval's own command line with the model registered first.
With the package's entry point installed (`lmms_eval.models` group, payload
`vidlada_jax.lmms:manifest`), plain `lmms-eval --model vidlada_jax ...` works the same way.
In Python, `register()` makes `--model vidlada_jax` resolvable in the running process.

The offline task `synthetic_video_qa` lives in `tasks/synthetic_video_qa/`: write its data with
`tasks.synthetic_video_qa.utils.write_task_data` and point `--include_path` at the directory it
reports (see that module). The model itself is `model.VidLaDAJax`.

Importing this package does not import lmms-eval or JAX, so lmms-eval can load the entry point
while it builds its model registry.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = 'vidlada_jax'
MODEL_CLASS_PATH = 'vidlada_jax.lmms.model.VidLaDAJax'
TASKS_DIR = Path(__file__).resolve().parent / 'tasks'


def manifest():
  """The lmms-eval model manifest of `vidlada_jax` (the `lmms_eval.models` entry point)."""
  # Imported here: lmms-eval calls this while `lmms_eval.models` is still initialising.
  from lmms_eval.models.registry_v2 import ModelManifest  # pylint: disable=g-import-not-at-top
  return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)


def register() -> None:
  """Makes `--model vidlada_jax` resolvable by lmms-eval in this process (idempotent)."""
  from lmms_eval import models  # pylint: disable=g-import-not-at-top
  models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
  models.AVAILABLE_MODELS[MODEL_NAME] = MODEL_CLASS_PATH.rsplit('.', 1)[-1]
