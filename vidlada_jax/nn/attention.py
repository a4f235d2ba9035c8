"""One attention op with pluggable backends.

Every attention layer of the model calls an `Attention` chosen once, when the model is built, from
the config (`ModelConfig.attention` for the language model, `ModelConfig.vision_attention` for the
vision tower, so a block-sparse LM backend never reaches SigLIP); layers never look at the
platform. The op computes

    q [B, Lq, H, D], k/v [B, Lk, Hkv, D]  ->  [B, Lq, H, D]

with softmax in float32 and scale 1/sqrt(D); `Hkv` may divide `H` (grouped-query attention).
Optional arguments carry what sparse backends need:

  key_mask   [B, Lk] bool: hides keys (padding in batched sampling); the reference never masks
  mask       a `FrameWindowMask`: per-token frame ids of queries and keys and a frame window w; a
             visual query of frame n then sees only frames n-w..n+w and the global (text) tokens
             (MARS-Cache's frame-wise chunk attention, `attention_backends.block_sparse`)
  global_kv  a `GlobalKV`: a few extra keys (anchors) merged into the same softmax

A backend pairs a dense path with a block-sparse implementation:

  name         dense calls                       frame-window calls
  xla          full score matrix (reference)     full mask (reference)
  xla_chunked  query chunks (bounded memory)     gathers only the visited key blocks
  pallas_gpu   our Triton kernel, all blocks     our Triton kernel, visited blocks
  pallas_tpu   our Mosaic kernel, all blocks     our Mosaic kernel, visited blocks
  cudnn        cuDNN flash attention             our Triton kernel
  splash       TPU splash attention              our Mosaic kernel
  auto         picked from the platform and compute dtype when the model is built

Pallas backends take `interpret=True` to run on CPU (tests); so does `cudnn`, whose adapter then
runs through XLA instead of cuDNN.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.attention_backends.block_sparse import GLOBAL, FrameWindowMask, GlobalKV

def dense_xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None
) -> jax.Array:
  """Reference attention: full score matrix, float32 softmax, probabilities cast to v's dtype."""
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum('bqhgd,bkhd->bhgqk', q, k, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  if key_mask is not None:
    scores = jnp.where(key_mask[:, None, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bhgqk,bkhd->bqhgd', probs, v)
  return out.reshape(batch, q_len, num_heads, head_dim)


def chunked_xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
    query_chunk: int = 256,
) -> jax.Array:
  """The same computation as `dense_xla_attention`, `query_chunk` queries at a time.

  Each chunk's scores [B, H, chunk, Lk] are a slice of the dense ones, computed and normalised
  the same way (so the results agree to float rounding of the matmuls), but the full [Lq, Lk]
  matrix never exists: memory is bounded for long video sequences on accelerators, and on CPUs
  the working set stays in cache (about 3x faster than dense at 2k tokens). Head-major layout
  makes both products plain batched matmuls.
  """
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  if q_len * 4 <= k.shape[1] and q_len <= query_chunk:
    return few_queries_attention(q, k, v, key_mask=key_mask)
  if q_len <= query_chunk:
    return dense_xla_attention(q, k, v, key_mask=key_mask)
  pad = -q_len % query_chunk
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q = q.reshape(batch, -1, query_chunk, num_kv_heads, groups, head_dim).transpose(1, 0, 3, 4, 2, 5)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, Lk, D]

  # Rematerialised: otherwise the backward pass keeps every chunk's float32 probabilities, the
  # whole [L, L] matrix the chunking exists to avoid (34 GB per 16K-token sequence).
  @jax.checkpoint
  def attend_chunk(q_chunk):  # [B, Hkv, G, chunk, D]
    scores = jnp.einsum('bhgqd,bhkd->bhgqk', q_chunk, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)
    if key_mask is not None:
      scores = jnp.where(key_mask[:, None, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum('bhgqk,bhkd->bhgqd', probs, v)

  out = jax.lax.map(attend_chunk, q)  # [chunks, B, Hkv, G, chunk, D]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, -1, num_heads, head_dim)
  return out[:, :q_len]


def few_queries_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None
) -> jax.Array:
  """`dense_xla_attention` for a few queries over many keys (cached decoding: a block of the
  response over the whole video), with the scores laid out key-major [B, Hkv, Lk, G * Lq].

  The keys are then the left operand of the first product with their head dimension minor, as a
  head-major cache stores them, so no [Lk, D] operand is ever transposed; only the small score
  matrix is. On CPUs this is 2-3x faster than the query-major layout at 64 x 3.5k.
  """
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  # Query heads of one kv head side by side: [B, Hkv, G * Lq, D] (small).
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q = q.reshape(batch, num_kv_heads, groups * q_len, head_dim)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # head-major [B, Hkv, Lk, D]
  scores = jnp.einsum('bhkd,bhmd->bhkm', k, q, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  if key_mask is not None:
    scores = jnp.where(key_mask[:, None, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-2).astype(v.dtype)
  out = jnp.einsum('bhkm,bhkd->bhmd', probs, v)  # [B, Hkv, G * Lq, D]
  out = out.reshape(batch, num_kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
  return out.reshape(batch, q_len, num_heads, head_dim)


@dataclasses.dataclass(frozen=True)
class Attention:
  """The attention op of one tower: a dense path and a block-sparse implementation.

  Plain data (names, not functions), so two models built from the same config compare equal and
  share compiled programs.
  """

  name: str
  # 'xla', 'xla_chunked', 'kernel' (the block-sparse kernel, every block), 'cudnn', 'splash'
  dense: str
  sparse: str  # a `vidlada_jax.attention_backends.block_sparse` implementation
  interpret: bool = False

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *,
               key_mask: jax.Array | None = None, mask: FrameWindowMask | None = None,
               global_kv: GlobalKV | None = None) -> jax.Array:
    if mask is None and global_kv is not None:
      raise ValueError('global_kv needs a frame-window mask (it holds the keys the mask hides)')
    attend = lambda q, k, v, key_mask, global_kv: self._attend(
        q, k, v, key_mask=key_mask, mask=mask, global_kv=global_kv)
    if self.name in PARTITIONED:
      return per_shard(attend, q, k, v, key_mask, global_kv)
    return attend(q, k, v, key_mask, global_kv)

  def _attend(self, q, k, v, *, key_mask, mask, global_kv):
    if mask is None:
      return self._dense(q, k, v, key_mask)
    # Global (text, response) queries see every key: they take the dense path, and only runs of
    # visual queries go through the block table, so a few global rows never make every query
    # block visit every key block.
    outputs = []
    for start, stop, is_global in _runs(mask.q_frame == GLOBAL):
      rows = q[:, start:stop]
      if is_global:
        outputs.append(self._dense(rows, k, v, key_mask))
      else:
        outputs.append(block_sparse.block_sparse_attention(
            rows, k, v,
            mask=FrameWindowMask(mask.q_frame[start:stop], mask.k_frame, mask.frame_window),
            key_mask=key_mask, global_kv=global_kv, implementation=self.sparse,
            interpret=self.interpret))
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)

  def _dense(self, q, k, v, key_mask):
    if self.dense == 'xla':
      return dense_xla_attention(q, k, v, key_mask=key_mask)
    if self.dense == 'xla_chunked':
      return chunked_xla_attention(q, k, v, key_mask=key_mask)
    if self.dense == 'kernel':  # every token global: the kernel visits every block
      mask = FrameWindowMask(np.full(q.shape[1], GLOBAL), np.full(k.shape[1], GLOBAL), 0)
      return block_sparse.block_sparse_attention(
          q, k, v, mask=mask, key_mask=key_mask, implementation=self.sparse,
          interpret=self.interpret)
    from vidlada_jax.attention_backends import dense  # cuDNN and splash: imported only where chosen
    if self.dense == 'cudnn':  # interpreted: the same adapter through XLA (no cuDNN on CPUs)
      return dense.cudnn_attention(q, k, v, key_mask=key_mask,
                                   implementation='xla' if self.interpret else 'cudnn')
    return dense.splash_attention(q, k, v, key_mask=key_mask, interpret=self.interpret)


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
  """Maximal runs of equal values: [(start, stop, value)]."""
  edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
  bounds = [0, *edges.tolist(), len(flags)]
  return [(a, b, bool(flags[a])) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# Backends whose kernels XLA cannot partition over a mesh (Pallas Mosaic and Triton, cuDNN's
# custom call, splash): they run per shard, under `shard_map`.
PARTITIONED = ('pallas_gpu', 'pallas_tpu', 'cudnn', 'splash')


def per_shard(attend, q, k, v, key_mask, global_kv):
  """`attend(q, k, v, key_mask, global_kv)` run on each device's shard of the batch and heads.

  The mesh is the one set around the jitted program (`jax.set_mesh`: the trainer and the sampler
  set it for a sharded model); the batch is split over its `sharding.BATCH_AXES`, query and
  key/value heads over its `sharding.HEAD_AXES`, where each divides the array (attention mixes
  neither rows nor heads, so each shard's result is its part of the whole). Without a mesh of
  several devices it is `attend` itself.
  """
  from vidlada_jax import sharding  # pylint: disable=g-import-not-at-top (it imports the model)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return attend(q, k, v, key_mask, global_kv)

  def axes(names, size):
    names = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
    return names if names and size % math.prod(mesh.shape[a] for a in names) == 0 else None

  batch = axes(sharding.BATCH_AXES, q.shape[0])
  heads = axes(sharding.HEAD_AXES, k.shape[2])
  if batch is None and heads is None:
    return attend(q, k, v, key_mask, global_kv)
  rows, per_head = PartitionSpec(batch), PartitionSpec(batch, None, heads, None)
  if key_mask is None:
    key_mask = jnp.ones(k.shape[:2], bool)
  specs = (per_head, per_head, per_head, rows)
  if global_kv is None:
    local = lambda q, k, v, key_mask: attend(q, k, v, key_mask, None)
    return jax.shard_map(local, in_specs=specs, out_specs=per_head, check_vma=False)(
        q, k, v, key_mask)
  specs += (GlobalKV(k=per_head, v=per_head, frame=rows, valid=rows),)
  return jax.shard_map(attend, in_specs=specs, out_specs=per_head, check_vma=False)(
      q, k, v, key_mask, global_kv)


# name -> (dense path, block-sparse implementation)
_BACKENDS = {
    'xla': ('xla', 'xla_dense'),
    'xla_chunked': ('xla_chunked', 'xla_gather'),
    'pallas_gpu': ('kernel', 'pallas_gpu'),
    'pallas_tpu': ('kernel', 'pallas_tpu'),
    'cudnn': ('cudnn', 'pallas_gpu'),
    'splash': ('splash', 'pallas_tpu'),
}


def available_backends() -> tuple[str, ...]:
  return tuple(sorted(_BACKENDS)) + ('auto',)


def current_platform() -> str:
  """jax's default backend, with GPUs told apart: 'cuda' or 'rocm' rather than 'gpu'."""
  platform = jax.default_backend()
  if platform == 'gpu':
    version = jax.devices()[0].client.platform_version.lower()
    return 'rocm' if 'rocm' in version or 'hip' in version else 'cuda'
  return platform


def resolve_auto(platform: str, dtype, *, tower: str = 'lm') -> str:
  """The backend `auto` means on `platform` for a `dtype` computation.

  cuDNN's fused attention takes half precision only (float32 stays on XLA) and refuses
  SigLIP's 729-token sequences ("Unsupported sequence length"); splash needs head dimensions
  that are multiples of 128, which SigLIP's 72 is not. So the vision tower takes the portable
  chunked XLA path on both.
  """
  half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
  # cuDNN is NVIDIA's: ROCm GPUs take the portable path.
  if platform in ('gpu', 'cuda') and half and tower == 'lm':
    return 'cudnn'
  if platform == 'tpu' and tower == 'lm':
    return 'splash'
  return 'xla_chunked'


def get_backend(name: str, *, dtype=jnp.float32, tower: str = 'lm', interpret: bool = False,
                platform: str | None = None) -> Attention:
  """The `Attention` op called `name` (`auto`: chosen from the platform and dtype)."""
  if name == 'auto':
    name = resolve_auto(platform or current_platform(), dtype, tower=tower)
  try:
    dense, sparse = _BACKENDS[name]
  except KeyError:
    raise ValueError(f'unknown attention backend {name!r}; available: '
                     f'{", ".join(available_backends())}') from None
  return Attention(name, dense, sparse, interpret)
