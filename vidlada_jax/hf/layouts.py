"""Declarative map between our parameters and the PyTorch checkpoints' tensors, both directions.

A layout is a table of (our parameter path, checkpoint tensor name, transform). Names with `{i}`
are per layer: our stacked parameter [layers, ...] gathers tensors i = 0..layers-1. Transforms
convert PyTorch's tensor layout (`Linear.weight` is [out, in], conv weights [out, in, kh, kw]) to
ours and back, and compute the PyTorch shape expected for a parameter, so shapes are checked from
file headers before any data is read.

Layouts (SPEC 2.3):
  llada_v  LLaDA-V / VidLaDA: Llama-style LM names, optionally with the vision tower under
           `model.vision_tower.vision_tower.vision_model.`, `model.mm_projector.*` and
           `model.image_newline` (a "combined" checkpoint).
  llada    the original LLaDA-8B names (`model.transformer.*`), language model only.
  siglip   a standalone SigLIP vision tower under any of the three prefixes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import re
from typing import Iterator

import numpy as np

from vidlada_jax.config import ModelConfig

LLADA_V, LLADA, SIGLIP = 'llada_v', 'llada', 'siglip'
LAYOUTS = (LLADA_V, LLADA, SIGLIP)

COMBINED_VISION_PREFIX = 'model.vision_tower.vision_tower.vision_model.'
VISION_PREFIXES = (COMBINED_VISION_PREFIX, 'vision_model.', '')


# --- Transforms ----------------------------------------------------------------------------------
# Each maps a tensor to our layout (`to_jax`) and back (`to_torch`); `into` writes `to_jax` straight
# into a destination buffer (cast to its dtype), so loading copies each tensor once more at most.
# `reorders` says whether it moves elements at all: one that does not lets a loader read the file's
# bytes straight into the destination.

def _bits(array: np.ndarray) -> np.ndarray:
  """The same bytes as unsigned integers: numpy copies those faster than ml_dtypes' bfloat16."""
  return array.view(f'u{array.dtype.itemsize}')


@functools.cache
def _transpose_workers() -> int:
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, min(8, cores or 1))


@functools.cache
def _transpose_pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(_transpose_workers(),
                                               thread_name_prefix='transpose')


def copy_cast(out: np.ndarray, value: np.ndarray) -> None:
  """`out[...] = value`, converting the dtype as `np.asarray(value, out.dtype)` would."""
  if out.dtype == value.dtype:
    np.copyto(_bits(out), _bits(value))
  else:
    np.copyto(out, value, casting='unsafe')


def _by_rows(work, rows: int, align: int = 1) -> None:
  """work(range) over `rows` rows split into one range per core (bounds on multiples of `align`):
  numpy copies without the GIL, so the cores fill disjoint rows at once."""
  bounds = np.linspace(0, rows, _transpose_workers() + 1).astype(int) // align * align
  bounds[-1] = rows
  ranges = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
  if len(ranges) < 2:
    work(range(rows))
  else:
    list(_transpose_pool().map(work, ranges))


def copy_into(out: np.ndarray, value: np.ndarray) -> None:
  """`copy_cast(out, value)`, split over the cores along the first axis for a large array:
  filling memory a process has not touched yet runs at a fraction of the memory's speed on one
  core."""
  if value.size < (1 << 22) or out.ndim == 0:
    copy_cast(out, value)
  else:
    _by_rows(lambda r: copy_cast(out[r.start:r.stop], value[r.start:r.stop]), out.shape[0])


# Rows of the source transposed per copy: each destination row gets 128 contiguous elements (four
# cache lines of bfloat16). Measured on 1 GB of 8B-shaped bfloat16 weights read from a mapped file:
# 1.3x the throughput of 64-row stripes, 3x of 512-row ones, about 5x a plain `source.T` copy.
STRIPE = 128


def transpose_into(out: np.ndarray, source: np.ndarray) -> None:
  """`out[...] = source.T` for 2-D arrays (cast to `out`'s dtype), in stripes of `STRIPE`
  source rows, the cores taking disjoint ranges of them."""

  def stripes(rows: range) -> None:
    for start in range(rows.start, rows.stop, STRIPE):
      stop = min(start + STRIPE, rows.stop)
      copy_cast(out[:, start:stop], source[start:stop].T)

  if source.size < (1 << 20):
    stripes(range(source.shape[0]))
  else:
    _by_rows(stripes, source.shape[0], align=STRIPE)


@dataclasses.dataclass(frozen=True)
class Identity:
  reorders = False

  def torch_shape(self, shape):
    return tuple(shape)

  def to_jax(self, tensor: np.ndarray, shape) -> np.ndarray:
    return tensor

  def into(self, out: np.ndarray, tensor: np.ndarray) -> None:
    copy_cast(out, tensor.reshape(out.shape))

  def to_torch(self, array: np.ndarray) -> np.ndarray:
    return array


@dataclasses.dataclass(frozen=True)
class Linear:
  """`Linear.weight` [out, in] <-> kernel [*in_dims, *out_dims] (the first `in_axes` are inputs)."""

  in_axes: int = 1
  reorders = True
  streams_rows = True  # `into` takes row blocks

  def torch_shape(self, shape):
    return (math.prod(shape[self.in_axes:]), math.prod(shape[:self.in_axes]))

  def to_jax(self, tensor, shape):
    return tensor.T.reshape(shape)

  def into(self, out, tensor, first_row: int = 0):
    """Rows [first_row, first_row + len(tensor)) of the PyTorch weight, transposed into `out`
    (the whole parameter): a weight can be streamed through in row blocks."""
    columns = out.reshape(tensor.shape[1], -1)  # a view: `out` is contiguous
    transpose_into(columns[:, first_row:first_row + tensor.shape[0]], tensor)

  def to_torch_into(self, out, array):
    """`to_torch(array)` written into the C-contiguous PyTorch-shaped `out`."""
    fan_in = math.prod(array.shape[:self.in_axes])
    transpose_into(out.reshape(-1, fan_in), array.reshape(fan_in, -1))

  def to_torch(self, array):
    fan_in = math.prod(array.shape[:self.in_axes])
    return array.reshape(fan_in, -1).T


@dataclasses.dataclass(frozen=True)
class Flat:
  """A flat bias [heads * head_dim] <-> [heads, head_dim]."""

  reorders = False

  def torch_shape(self, shape):
    return (math.prod(shape),)

  def to_jax(self, tensor, shape):
    return tensor.reshape(shape)

  def into(self, out, tensor):
    copy_cast(out, tensor.reshape(out.shape))

  def to_torch(self, array):
    return array.reshape(-1)


@dataclasses.dataclass(frozen=True)
class ConvKernel:
  """Conv2d weight [out, in, kh, kw] <-> [kh, kw, in, out] (HWIO)."""

  reorders = True

  def torch_shape(self, shape):
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)

  def to_jax(self, tensor, shape):
    return tensor.transpose(2, 3, 1, 0)

  def into(self, out, tensor):
    copy_cast(out, tensor.transpose(2, 3, 1, 0))

  def to_torch(self, array):
    return array.transpose(3, 2, 0, 1)


IDENTITY, LINEAR, FLAT, CONV = Identity(), Linear(), Flat(), ConvKernel()
LINEAR_FROM_HEADS = Linear(in_axes=2)


# --- Tables --------------------------------------------------------------------------------------

# parameter path                             LLaDA-V name                                     original LLaDA name                              transform
_LM = (
    ('lm/embed_tokens/embedding',                'model.embed_tokens.weight',                     'model.transformer.wte.weight',                  IDENTITY),
    ('lm/norm/weight',                           'model.norm.weight',                             'model.transformer.ln_f.weight',                 IDENTITY),
    ('lm/lm_head/kernel',                        'lm_head.weight',                                'model.transformer.ff_out.weight',               LINEAR),
    ('lm/layers/input_layernorm/weight',         'model.layers.{i}.input_layernorm.weight',       'model.transformer.blocks.{i}.attn_norm.weight', IDENTITY),
    ('lm/layers/self_attn/q_proj/kernel',        'model.layers.{i}.self_attn.q_proj.weight',      'model.transformer.blocks.{i}.q_proj.weight',    LINEAR),
    ('lm/layers/self_attn/k_proj/kernel',        'model.layers.{i}.self_attn.k_proj.weight',      'model.transformer.blocks.{i}.k_proj.weight',    LINEAR),
    ('lm/layers/self_attn/v_proj/kernel',        'model.layers.{i}.self_attn.v_proj.weight',      'model.transformer.blocks.{i}.v_proj.weight',    LINEAR),
    ('lm/layers/self_attn/o_proj/kernel',        'model.layers.{i}.self_attn.o_proj.weight',      'model.transformer.blocks.{i}.attn_out.weight',  LINEAR_FROM_HEADS),
    ('lm/layers/post_attention_layernorm/weight', 'model.layers.{i}.post_attention_layernorm.weight', 'model.transformer.blocks.{i}.ff_norm.weight', IDENTITY),
    ('lm/layers/mlp/gate_proj/kernel',           'model.layers.{i}.mlp.gate_proj.weight',         'model.transformer.blocks.{i}.ff_proj.weight',   LINEAR),
    ('lm/layers/mlp/up_proj/kernel',             'model.layers.{i}.mlp.up_proj.weight',           'model.transformer.blocks.{i}.up_proj.weight',   LINEAR),
    ('lm/layers/mlp/down_proj/kernel',           'model.layers.{i}.mlp.down_proj.weight',         'model.transformer.blocks.{i}.ff_out.weight',    LINEAR),
)

# parameter path (under vision_tower/)      SigLIP name (after the tower prefix)             transform
_VISION = (
    ('patch_embedding/kernel',                 'embeddings.patch_embedding.weight',             CONV),
    ('patch_embedding/bias',                   'embeddings.patch_embedding.bias',               IDENTITY),
    ('position_embedding/embedding',           'embeddings.position_embedding.weight',          IDENTITY),
    ('layers/layer_norm1/scale',               'encoder.layers.{i}.layer_norm1.weight',         IDENTITY),
    ('layers/layer_norm1/bias',                'encoder.layers.{i}.layer_norm1.bias',           IDENTITY),
    ('layers/self_attn/q_proj/kernel',         'encoder.layers.{i}.self_attn.q_proj.weight',    LINEAR),
    ('layers/self_attn/q_proj/bias',           'encoder.layers.{i}.self_attn.q_proj.bias',      FLAT),
    ('layers/self_attn/k_proj/kernel',         'encoder.layers.{i}.self_attn.k_proj.weight',    LINEAR),
    ('layers/self_attn/k_proj/bias',           'encoder.layers.{i}.self_attn.k_proj.bias',      FLAT),
    ('layers/self_attn/v_proj/kernel',         'encoder.layers.{i}.self_attn.v_proj.weight',    LINEAR),
    ('layers/self_attn/v_proj/bias',           'encoder.layers.{i}.self_attn.v_proj.bias',      FLAT),
    ('layers/self_attn/out_proj/kernel',       'encoder.layers.{i}.self_attn.out_proj.weight',  LINEAR_FROM_HEADS),
    ('layers/self_attn/out_proj/bias',         'encoder.layers.{i}.self_attn.out_proj.bias',    IDENTITY),
    ('layers/layer_norm2/scale',               'encoder.layers.{i}.layer_norm2.weight',         IDENTITY),
    ('layers/layer_norm2/bias',                'encoder.layers.{i}.layer_norm2.bias',           IDENTITY),
    ('layers/mlp/fc1/kernel',                  'encoder.layers.{i}.mlp.fc1.weight',             LINEAR),
    ('layers/mlp/fc1/bias',                    'encoder.layers.{i}.mlp.fc1.bias',               IDENTITY),
    ('layers/mlp/fc2/kernel',                  'encoder.layers.{i}.mlp.fc2.weight',             LINEAR),
    ('layers/mlp/fc2/bias',                    'encoder.layers.{i}.mlp.fc2.bias',               IDENTITY),
    ('post_layernorm/scale',                   'post_layernorm.weight',                         IDENTITY),
    ('post_layernorm/bias',                    'post_layernorm.bias',                           IDENTITY),
)

_PROJECTOR = (
    ('mm_projector/linear_1/kernel',           'model.mm_projector.0.weight',                   LINEAR),
    ('mm_projector/linear_1/bias',             'model.mm_projector.0.bias',                     IDENTITY),
    ('mm_projector/linear_2/kernel',           'model.mm_projector.2.weight',                   LINEAR),
    ('mm_projector/linear_2/bias',             'model.mm_projector.2.bias',                     IDENTITY),
    ('image_newline',                          'model.image_newline',                           IDENTITY),
)


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter and the checkpoint tensor(s) it comes from."""

  param: str
  source: str  # holds `{i}` when the parameter stacks one tensor per layer
  transform: Identity | Linear | Flat | ConvKernel

  @property
  def stacked(self) -> bool:
    return '{i}' in self.source

  def source_names(self, num_layers: int) -> list[str]:
    if self.stacked:
      return [self.source.format(i=i) for i in range(num_layers)]
    return [self.source]


def tensor_table(config: ModelConfig, layout: str, vision_prefix: str = COMBINED_VISION_PREFIX):
  """Every parameter of a model with `config`, and where it lives in a `layout` checkpoint."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown checkpoint layout {layout!r}; known: {", ".join(LAYOUTS)}')
  if layout == LLADA and config.vision is not None:
    raise ValueError('the original LLaDA layout holds a language model only; '
                     'export a multimodal model with layout "llada_v"')
  if layout == SIGLIP and config.lm is not None:
    raise ValueError('the SigLIP layout holds a vision tower only')
  table = []
  if config.lm is not None:
    column = 2 if layout == LLADA else 1
    table += [TensorMap(row[0], row[column], row[3]) for row in _LM]
  if config.vision is not None:
    table += [TensorMap('vision_tower/' + p, vision_prefix + s, t) for p, s, t in _VISION]
  if config.is_multimodal:
    table += [TensorMap(p, s, t) for p, s, t in _PROJECTOR]
  return table


def num_layers_of(config: ModelConfig, entry: TensorMap) -> int:
  return config.vision.num_layers if entry.param.startswith('vision_tower/') else config.lm.num_layers


def expected_names(config: ModelConfig, table) -> Iterator[tuple[str, TensorMap, int | None]]:
  """(tensor name, its entry, layer index or None) for every tensor the model needs."""
  for entry in table:
    if entry.stacked:
      for i, name in enumerate(entry.source_names(num_layers_of(config, entry))):
        yield name, entry, i
    else:
      yield entry.source, entry, None


def ignorable(name: str, config: ModelConfig, vision_prefix: str, *, text_tower: bool = False) -> bool:
  """Tensors a checkpoint may hold that the reference never uses (SPEC 2.3): the vision layer
  after the last used one (the 27th of so400m), the pooling head, and, in a full SigLIP model,
  its text tower."""
  if config.vision is not None and name.startswith(vision_prefix):
    rest = name[len(vision_prefix):]
    if rest.startswith('head.'):
      return True
    match = re.match(r'encoder\.layers\.(\d+)\.', rest)
    if match and int(match.group(1)) == config.vision.num_layers:
      return True
  if text_tower and (name.startswith('text_model.') or name in ('logit_scale', 'logit_bias')):
    return True
  return False


def vision_prefix_of(names) -> str:
  """Which of the three tower prefixes a standalone SigLIP checkpoint uses."""
  for prefix in VISION_PREFIXES[:-1]:
    if any(n.startswith(prefix + 'embeddings.') for n in names):
      return prefix
  return ''
