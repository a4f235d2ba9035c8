"""vidlada-jax (orbax) checkpoint -> PyTorch checkpoint in the reference's names and layouts.

    python -m vidlada_jax.convert.jax_to_hf --src OUT_DIR --dst HF_DIR
                                [--layout llada_v|llada|siglip] [--max-shard-size 5GB]
                                [--dtype bfloat16|float32] [--overwrite]

Writes safetensors with the reference's tensor names and PyTorch layouts (`Linear.weight` is
[out, in], conv weights [out, in, kh, kw]), `model.safetensors.index.json` when the tensors span
several files, and a `config.json` the reference code reads (the original one when exporting to
the layout the weights came from). The default layout is the source's; `llada_v` writes the
LLaDA-V/VidLaDA names (combined when the model has a vision tower), `llada` the original LLaDA
names (language model only). Tensors are restored and written one at a time, each straight to
its offset in its file, so memory holds one tensor, never a whole shard.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vidlada_jax import checkpoint as jax_checkpoint
from vidlada_jax import orbax_io
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf import layouts
from vidlada_jax.hf.safetensors_io import (CheckpointError, ShardedSafetensorsWriter, TensorSpec,
                                           Scratch, safetensors_dtype)

_DTYPES = ('bfloat16', 'float32', 'float16')
_UNITS = {'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30}


def parse_size(text: str) -> int:
  """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, '1000' -> 1000 bytes."""
  match = re.fullmatch(r'\s*([\d.]+)\s*([A-Za-z]*)\s*', text)
  unit = (match.group(2) or 'B').upper() if match else None
  if not match or unit not in _UNITS:
    raise ValueError(f'cannot read size {text!r}; write e.g. 5GB, 500MB or 2GiB')
  return int(float(match.group(1)) * _UNITS[unit])


def natural_sort_key(name: str):
  """Sort key putting model.layers.2 before model.layers.10."""
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


class ExportPlan:
  """The tensors a vidlada-jax checkpoint becomes in a PyTorch layout: their specs up front, then
  their values one parameter at a time (`tensors()`)."""

  def __init__(self, src, *, layout: str | None = None, dtype: str | None = None):
    src = jax_checkpoint.resolve(src)
    if dtype is not None and dtype not in _DTYPES:
      raise ValueError(f'--dtype must be one of {_DTYPES}, got {dtype!r}')
    manifest = jax_checkpoint.read_manifest(src)
    source = manifest.source
    config = manifest.model
    layout = layout or (source.layout if source else
                        layouts.SIGLIP if config.lm is None else layouts.LLADA_V)
    if layout not in layouts.LAYOUTS:
      raise ValueError(f'unknown layout {layout!r}; choose one of {", ".join(layouts.LAYOUTS)}')
    self.notes: list[str] = []
    config = self._select_parts(config, layout)
    same_as_source = bool(source) and source.layout == layout and config == manifest.model
    prefix = (source.vision_prefix if same_as_source and layout == layouts.SIGLIP
              else '' if layout == layouts.SIGLIP else layouts.COMBINED_VISION_PREFIX)
    self.src, self.layout, self.config, self.dtype = src, layout, config, dtype
    self.table = layouts.tensor_table(config, layout, prefix)
    self.stored = jax_checkpoint.stored_params(src)
    missing = [e.param for e in self.table if e.param not in self.stored]
    if missing:
      raise CheckpointError(f'{self.params_dir} lacks parameters the export needs: {missing}')

    self.specs: list[TensorSpec] = []
    for entry in self.table:
      stored = self.stored[entry.param]
      torch_shape = tuple(entry.transform.torch_shape(
          stored.shape[1:] if entry.stacked else stored.shape))
      for name in self._names(entry):
        self.specs.append(TensorSpec(name, torch_shape, safetensors_dtype(self._out(stored.dtype))))

    self.passthrough = []
    if same_as_source and source.passthrough:
      for tensor in jax_checkpoint.stored_passthrough(src):
        dtype_out = self._out(tensor.dtype) if tensor.dtype.kind == 'f' else tensor.dtype
        self.passthrough.append((tensor, dtype_out))
        self.specs.append(TensorSpec(tensor.name, tuple(tensor.shape),
                                     safetensors_dtype(dtype_out)))
    elif source and source.passthrough:
      self.notes.append(
          f'{len(source.passthrough)} tensor(s) the model does not use (e.g. '
          f'{source.passthrough[0]}) belong to the source layout and are not exported')
    if layout == layouts.SIGLIP and not any(
        re.search(rf'encoder\.layers\.{config.vision.num_layers}\.', t.name)
        for t, _ in self.passthrough):
      raise ValueError(
          'a standalone SigLIP checkpoint counts the layer the reference drops, and this '
          'checkpoint does not hold it (it was not converted from a standalone SigLIP tower); '
          'export with --layout llada_v instead')
    self.specs.sort(key=lambda s: natural_sort_key(s.name))
    self.config_json = (
        (dict(source.config, torch_dtype=dtype) if dtype else dict(source.config))
        if same_as_source
        else hf_config.export_config(config, layout, dtype or manifest.stored_dtype))

  def _select_parts(self, config, layout):
    if layout == layouts.LLADA:
      if config.lm is None:
        raise ValueError('the llada layout holds a language model, and this checkpoint has none')
      if config.vision is not None:
        self.notes.append('the llada layout is language-model only: the vision tower and '
                          'projector are not exported')
        config = config.replace(vision=None)
    elif layout == layouts.SIGLIP:
      if config.vision is None:
        raise ValueError('the siglip layout holds a vision tower, and this checkpoint has none')
      if config.lm is not None:
        self.notes.append('the siglip layout is vision only: the language model is not exported')
        config = config.replace(lm=None)
    elif config.lm is None:
      raise ValueError('the llada_v layout needs a language model; export a tower as siglip')
    return config

  def _out(self, stored_dtype) -> np.dtype:
    return np.dtype(stored_dtype if self.dtype is None else jnp.dtype(self.dtype))

  def _names(self, entry) -> list[str]:
    return entry.source_names(layouts.num_layers_of(self.config, entry))

  @property
  def nbytes(self) -> int:
    return sum(s.nbytes for s in self.specs)

  # Arrays restored per orbax call: each call has a fixed cost (tens of ms), so small tensors are
  # read together, and memory holds at most this much beside the largest single array.
  READ_BATCH_BYTES = 256 << 20

  def reads(self) -> list[tuple[str, tuple[int, ...], np.dtype, list[tuple[str, Any, int | None]]]]:
    """Every stored array to read, in export order: (key, shape, dtype, [(tensor name,
    conversion, layer index or None)]) - a parameter stored whole becomes all its layers."""
    out = []
    for entry in self.table:
      stored = self.stored[entry.param]
      dtype = self._out(stored.dtype)
      key = jax_checkpoint.param_key(entry.param)
      if not entry.stacked:
        out.append((key, stored.shape, dtype, [(entry.source, entry.transform, None)]))
      elif stored.layers is None:  # stored whole (as a training run saves it)
        out.append((key, stored.shape, dtype,
                    [(name, entry.transform, i) for i, name in enumerate(self._names(entry))]))
      else:
        for i, name in enumerate(self._names(entry)):
          out.append((jax_checkpoint.param_key(jax_checkpoint.layer_key(entry.param, i)),
                      stored.shape[1:], dtype, [(name, entry.transform, None)]))
    for tensor, dtype_out in self.passthrough:
      out.append((tensor.key, tensor.shape, tensor.dtype, [(tensor.name, dtype_out, None)]))
    return out

  def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
    """(name, PyTorch-layout array) for every spec, restoring a batch of stored arrays at a time.
    An array yielded may be a reused buffer: write it out before taking the next."""
    scratch = Scratch()

    def convert(how, value: np.ndarray) -> np.ndarray:
      if not hasattr(how, 'to_torch'):  # a passthrough tensor: `how` is its dtype
        return value.astype(how, copy=False)
      if not hasattr(how, 'to_torch_into'):
        return how.to_torch(value)
      out = scratch.array(how.to_torch(value).shape, value.dtype)
      how.to_torch_into(out, value)  # a striped transpose, not numpy's strided copy
      return out

    reads = self.reads()
    abstract = {key: np.empty(shape, dtype) for key, shape, dtype, _ in reads}
    outputs = {key: outs for key, _, _, outs in reads}
    for key, value in orbax_io.load_in_batches(self.src, abstract, self.READ_BATCH_BYTES):
      for name, how, layer in outputs[key]:
        yield name, convert(how, value if layer is None else value[layer])


def export(src, dst, *, layout: str | None = None, max_shard_size: str = '5GB',
           dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
  """Exports vidlada-jax checkpoint `src` to a PyTorch checkpoint directory `dst`."""
  start = time.perf_counter()
  plan = ExportPlan(src, layout=layout, dtype=dtype)
  bar = tqdm(total=plan.nbytes, unit='B', unit_scale=True, desc=f'orbax -> {Path(dst).name}',
             disable=not progress)
  with jax_checkpoint.staged_output(dst, overwrite) as staging, bar:
    writer = ShardedSafetensorsWriter(staging, plan.specs, parse_size(max_shard_size))
    for name, value in plan.tensors():
      writer.write(name, value)
      bar.update(value.nbytes)
    writer.close()
    (staging / 'config.json').write_text(json.dumps(plan.config_json, indent=2))
    copied = jax_checkpoint.copy_tokenizer_files(src, staging)
  return dict(layout=plan.layout, tensors=len(plan.specs), bytes=plan.nbytes, notes=plan.notes,
              files=len(writer.files), tokenizer_files=copied,
              seconds=time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vidlada_jax.convert.jax_to_hf', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='vidlada-jax checkpoint directory')
  parser.add_argument('--dst', required=True, help='PyTorch checkpoint directory to write')
  parser.add_argument('--layout', choices=layouts.LAYOUTS,
                      help='tensor names to write (default: the layout the weights came from)')
  parser.add_argument('--max-shard-size', default='5GB', help='largest safetensors file (5GB)')
  parser.add_argument('--dtype', choices=_DTYPES, help='tensor dtype (default: as stored)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a non-empty --dst (only once the export is complete)')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  args = parser.parse_args(argv)
  try:
    summary = export(args.src, args.dst, layout=args.layout, max_shard_size=args.max_shard_size,
                     dtype=args.dtype, overwrite=args.overwrite, progress=not args.quiet)
  except (ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for note in summary['notes']:
    print(f'note: {note}')
  print(f'wrote {args.dst}: {summary["tensors"]} tensors in {summary["files"]} file(s), '
        f'{summary["layout"]} layout ({summary["bytes"] / 1e9:.2f} GB in '
        f'{summary["seconds"]:.1f}s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
