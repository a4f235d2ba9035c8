"""PyTorch checkpoint -> vidlada-jax (orbax) checkpoint, one parameter at a time.

    python -m vidlada_jax.convert.hf_to_jax --src HF_DIR --dst OUT_DIR [--dtype bfloat16|float32]
                                [--mesh fsdp=8,tensor=1] [--overwrite]

Reads any layout `vj.from_pretrained` accepts (LLaDA-V/VidLaDA combined or LM-only, original
LLaDA, standalone SigLIP), validates it completely from the file headers, then converts tensor
by tensor: each tensor is read, put into our layout (and `--dtype`, by default the stored dtype,
so a round trip is bit-exact), placed in its sharding on `--mesh`, and written to orbax before the
next is read (parameters stacked over layers are stored one array per layer). Peak memory is a
few times the largest tensor, whatever the number of layers.
Tensors the model does not use (the 27th vision layer, the pooling head) are carried in
`passthrough/` so that `vidlada_jax.convert.jax_to_hf` reproduces the source. Tokenizer files are
copied. `vj.from_pretrained(OUT_DIR)` loads the result, restoring straight into the requested
shardings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from vidlada_jax import checkpoint as jax_checkpoint
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf.safetensors_io import SafetensorsCheckpoint
from vidlada_jax.loading import LoadPlan, read_hf_config

_DTYPES = ('bfloat16', 'float32', 'float16')


def parse_mesh(text: str | None) -> tuple[Mesh, tuple] | None:
  """'fsdp=8,tensor=1' -> (mesh, fsdp_tp rules); axes not named have size 1."""
  if not text:
    return None
  shape = dict(data=1, fsdp=1, tensor=1)
  for item in text.split(','):
    axis, _, size = item.partition('=')
    if axis not in shape or not size.lstrip('-').isdigit():
      raise ValueError(f'--mesh expects axis=size pairs over {tuple(shape)}, got {item!r}')
    shape[axis] = int(size)
  devices = jax.device_count()
  if -1 not in shape.values() and np.prod(list(shape.values())) != devices:
    raise ValueError(
        f'--mesh {text} needs {int(np.prod(list(shape.values())))} devices but {devices} are '
        'available (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)')
  return sharding_lib.make_mesh(shape), sharding_lib.RULE_SETS['fsdp_tp']


def convert(src, dst, *, dtype: str | None = None, mesh: Mesh | None = None, rules=None,
            overwrite: bool = False, progress: bool = True) -> dict:
  """Converts HF checkpoint directory `src` into a vidlada-jax checkpoint at `dst`.

  Returns a summary (tensor and byte counts, seconds).
  """
  start = time.perf_counter()
  src = Path(src)
  if dtype is not None and dtype not in _DTYPES:
    raise ValueError(f'--dtype must be one of {_DTYPES}, got {dtype!r}')
  if mesh is None and jax.process_count() > 1:
    raise ValueError('a multi-host conversion needs --mesh (each process writes its shards)')
  raw = read_hf_config(src)
  layout, config, facts = hf_config.parse(raw)
  with SafetensorsCheckpoint(src) as tensors:
    plan = LoadPlan(tensors, config, layout, text_tower=facts.get('text_tower', False))
    param_dtypes = {p: np.dtype(dtype) if dtype else plan.stored_dtype(p) for p in plan.params}
    shardings = sharding_lib.target_shardings(plan.abstract_state, mesh, rules)
    total = sum(tensors.nbytes(n) for n in tensors.names)
    bar = tqdm(total=total, unit='B', unit_scale=True, desc=f'{src.name} -> orbax',
               disable=not progress or jax.process_index() != 0)

    manifest = jax_checkpoint.Manifest(
        model=config, param_dtypes={p: str(d) for p, d in param_dtypes.items()},
        source=jax_checkpoint.Source(layout=layout, vision_prefix=plan.vision_prefix,
                                     config=raw, passthrough=list(plan.ignored)))
    with jax_checkpoint.staged_output(dst, overwrite, create=False) as staging, bar:
      writer = jax_checkpoint.ModelWriter(staging, manifest)
      for path in plan.params:
        target = shardings[path]
        entry = plan.entries[path]
        if entry.stacked:  # one layer's tensor at a time, stored one array per layer
          layer_target = jax_checkpoint.without_layer_axis(target)
          for i, name in enumerate(entry.source_names(plan.num_layers(entry))):
            array = plan.place_layer(path, i, param_dtypes[path], layer_target)
            writer.add_layer(path, i, array)
            bar.update(tensors.nbytes(name))
        else:
          writer.add_param(path, plan.place(path, param_dtypes[path], target))
          bar.update(plan.source_bytes(path))
      for i, name in enumerate(plan.ignored):
        # Host arrays: any dtype (int64 too), written once by the primary process.
        writer.add_passthrough(i, tensors.read(name))
        bar.update(tensors.nbytes(name))
      writer.finalize()
      copied = jax_checkpoint.copy_tokenizer_files(src, staging)
  return dict(layout=layout, params=len(plan.params), passthrough=len(plan.ignored),
              tokenizer_files=copied, bytes=total, seconds=time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vidlada_jax.convert.hf_to_jax', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='PyTorch checkpoint directory')
  parser.add_argument('--dst', required=True, help='vidlada-jax checkpoint directory to write')
  parser.add_argument('--dtype', choices=_DTYPES, help='parameter dtype (default: as stored)')
  parser.add_argument('--mesh', help='shard while converting, e.g. fsdp=8,tensor=1 '
                                     '(required on multi-host runs)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a non-empty --dst (only once the new checkpoint is complete)')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  args = parser.parse_args(argv)
  try:
    mesh_and_rules = parse_mesh(args.mesh)
    mesh, rules = mesh_and_rules if mesh_and_rules else (None, None)
    summary = convert(args.src, args.dst, dtype=args.dtype, mesh=mesh, rules=rules,
                      overwrite=args.overwrite, progress=not args.quiet)
  except (ValueError, FileExistsError) as e:  # CheckpointError and ConfigError are ValueErrors
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {args.dst}: {summary["params"]} parameters from a {summary["layout"]} checkpoint '
        f'({summary["bytes"] / 1e9:.2f} GB in {summary["seconds"]:.1f}s), '
        f'{summary["passthrough"]} unused tensor(s) kept, tokenizer files: '
        f'{", ".join(summary["tokenizer_files"]) or "none"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
