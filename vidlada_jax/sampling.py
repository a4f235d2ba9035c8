"""Block-diffusion sampling with low-confidence remasking (SPEC 4), one compiled program per shape.

The response canvas starts as `gen_length` mask tokens after the prompt. Blocks of `block_length`
positions are decoded left to right; within a block, each denoising step runs the bidirectional
LM over the whole sequence, proposes a token for every masked position of the block (greedy or
Gumbel-max), scores the proposals (their probability, or a random number), and reveals the
`k` best, where `k` follows the reference's per-block transfer schedule. A revealed token is never
masked again. Once a stop token (`<|eot_id|>`) is revealed, only positions before it still need
filling, and later blocks are skipped.

The whole decode is one `jax.jit` program: visual tokens are encoded once, then nested
`lax.while_loop`s over blocks and steps carry an explicit `DecodeState` (canvas, still-masked
flags, block and step counters, cache-policy state); nothing returns to the host between steps.
`generate` is a pure function of (model, prompt, config, rng, cache policy).

Batches: rows may have different prompt lengths. Prompts are left-padded so every canvas sits in
the same columns; padding keys are hidden from attention (`key_mask`) and positions count only a
row's own tokens, so each real token sees exactly the keys and positions it would see alone, and
a row's result equals what that row alone gives (tokens equal; logits up to float summation
order). Randomness is per row (one key per row), so this holds at temperature > 0 too.

Difference from the reference, by design: after a stop, the reference's `topk` may pick -inf
positions when a step's `k` exceeds the positions left, overwriting tokens it had revealed before
the stop. Here a revealed token never changes: `k` is capped at the positions still to fill.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from vidlada_jax.config import TokenIds
from vidlada_jax.vidlada import SpliceLayout, VidLaDA, check_image_placeholders

REMASKING = ('low_confidence', 'random')


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """What to decode and how; validated on construction (hashable: a static jit argument)."""

  gen_length: int
  steps: int
  block_length: int
  temperature: float = 0.0
  remasking: str = 'low_confidence'
  cfg_scale: float = 0.0
  stop_ids: tuple[int, ...] = (TokenIds().eot,)
  threshold: float | None = None  # Fast-dLLM parallel decoding: reveal all above it, >= 1 a step
  tokens: TokenIds = TokenIds()

  def __post_init__(self):
    object.__setattr__(self, 'stop_ids', tuple(int(i) for i in (self.stop_ids or ())))
    for name in ('gen_length', 'steps', 'block_length'):
      if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) <= 0:
        raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)!r}')
    if self.gen_length % self.block_length:
      raise ValueError(f'gen_length {self.gen_length} must be a multiple of block_length '
                       f'{self.block_length}')
    if self.steps % self.num_blocks:
      raise ValueError(f'steps {self.steps} must be a multiple of the number of blocks '
                       f'{self.num_blocks} (gen_length / block_length)')
    if self.steps_per_block > self.block_length:
      raise ValueError(f'{self.steps_per_block} steps per block exceed the block length '
                       f'{self.block_length}: every step must reveal at least one token')
    if self.remasking not in REMASKING:
      raise ValueError(f'remasking must be one of {REMASKING}, got {self.remasking!r}')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}')
    if self.cfg_scale < 0:
      raise ValueError(f'cfg_scale must be >= 0, got {self.cfg_scale}')
    if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f'threshold must be in [0, 1], got {self.threshold}')

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks

  @property
  def max_steps_per_block(self) -> int:
    """The fixed schedule takes steps_per_block; threshold decoding may take one per token."""
    return self.block_length if self.threshold is not None else self.steps_per_block

  @property
  def suppressed_ids(self) -> tuple[int, ...]:
    t = self.tokens
    return (t.eos, t.bos, t.start_header, t.end_header)


def transfer_schedule(masked_at_block_start: jax.Array, step: jax.Array, steps: int) -> jax.Array:
  """Tokens to reveal at `step` of a block: n // steps, plus one in the first n % steps steps."""
  return masked_at_block_start // steps + (step < masked_at_block_start % steps)


def step_keys(row_keys: jax.Array, block, step) -> tuple[jax.Array, jax.Array]:
  """(Gumbel key, uniform key) of every row at (block, step): the sampler's random stream."""
  keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, block), step))(row_keys)
  split = jax.vmap(jax.random.split)(keys)
  return split[:, 0], split[:, 1]


# --- Cache policies ------------------------------------------------------------------------------


@struct.dataclass
class Prompt:
  """What a cache policy knows about the prompt of one decode (loop-invariant).

  Rows are left-padded prompts followed by the canvas; `positions` and `key_mask` cover both.
  `layout` says which prompt rows are visual tokens and of which frame (None for text prompts).
  """

  embeddings: jax.Array  # [B, Lp, E]: text and visual tokens, spliced
  positions: jax.Array  # [B, Lp + G] int32
  key_mask: jax.Array  # [B, Lp + G] bool: padding keys hidden
  layout: SpliceLayout | None
  num_visual: int = struct.field(pytree_node=False, default=0)  # visual tokens per row
  tokens_per_frame: int = struct.field(pytree_node=False, default=1)

  @property
  def length(self) -> int:
    return self.embeddings.shape[1]


class CachePolicy(Protocol):
  """How the sampler obtains the hidden states of the current block at each step.

  `init` runs once per decode, after the prompt is embedded; `block_hidden` once per denoising
  step, with the canvas' embeddings and the step's counters (block, step within the block, global
  step). The policy decides what the model recomputes; its state (a per-layer `LMCache`) rides
  in the loop carry, so a cache never forks the model or the sampler. Policies are frozen
  dataclasses: hashable, they are static arguments of the one compiled program.
  """

  def init(self, model: VidLaDA, prompt: Prompt, config: 'SamplerConfig', mesh=None):
    ...

  def block_hidden(self, model: VidLaDA, prompt: Prompt, state, canvas: jax.Array, *,
                   block: jax.Array, block_step: jax.Array, step: jax.Array,
                   config: 'SamplerConfig'):
    """-> (final hidden states of the current block [B, block_length, E], new state)."""
    ...


@dataclasses.dataclass(frozen=True)
class FullRecompute:
  """No cache: every step recomputes every layer over the whole sequence (the reference)."""

  def init(self, model, prompt, config, mesh=None):
    return ()

  def block_hidden(self, model, prompt, state, canvas, *, block, block_step, step, config):
    sequence = jnp.concatenate([prompt.embeddings, canvas.astype(prompt.embeddings.dtype)], axis=1)
    hidden = model.lm(sequence, prompt.positions, prompt.key_mask)
    start = prompt.length + block * config.block_length
    return jax.lax.dynamic_slice_in_dim(hidden, start, config.block_length, axis=1), state


# --- The decode ----------------------------------------------------------------------------------


@struct.dataclass
class DecodeState:
  canvas: jax.Array  # [B, G] int32: revealed tokens, the mask id elsewhere
  masked: jax.Array  # [B, G] bool: still masked
  block: jax.Array  # () int32
  step: jax.Array  # () int32, within the block
  block_masked: jax.Array  # [B] int32: masked positions of the block when it started
  forwards: jax.Array  # () int32: denoising steps run (the global step counter)
  history: jax.Array  # [blocks, max_steps, B, G] canvases after each step (or a [0] placeholder)
  cache: object


@struct.dataclass
class SampleOutput:
  tokens: jax.Array  # [B, gen_length] int32, the final canvas
  lengths: jax.Array  # [B] int32: tokens before the first stop id, else gen_length
  forwards: jax.Array  # () int32: denoising steps (model evaluations) run
  history: jax.Array | None = None  # [blocks, max_steps, B, G], -1 where no step ran


def first_stop(canvas, masked, stop_ids) -> jax.Array:
  """Index of the first revealed stop token of each row, else gen_length."""
  if not stop_ids:
    return jnp.full(canvas.shape[:1], canvas.shape[1], jnp.int32)
  is_stop = jnp.isin(canvas, jnp.asarray(stop_ids)) & ~masked
  found = jnp.argmax(is_stop, axis=1)
  return jnp.where(is_stop.any(axis=1), found, canvas.shape[1]).astype(jnp.int32)


# The remasking policy, as pure functions of one step's block logits [B, block, vocab].


def propose(logits, masked, config: SamplerConfig, gumbel_keys) -> tuple[jax.Array, jax.Array]:
  """(proposals, logits after suppression): EOS/BOS/header ids are barred at masked positions;
  greedy at temperature 0, else Gumbel-max (equal in law to the reference's float64 form)."""
  barred = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(config.suppressed_ids)].set(True)
  logits = jnp.where(masked[..., None] & barred, -jnp.inf, logits)
  if config.temperature > 0:
    noise = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[1:], jnp.float32))(gumbel_keys)
    return jnp.argmax(logits / config.temperature + noise, axis=-1).astype(jnp.int32), logits
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), logits


def confidence_of(logits, proposals, config: SamplerConfig, uniform_keys) -> jax.Array:
  """Probability of each proposal ("low_confidence"), or a uniform random score ("random")."""
  if config.remasking == 'random':
    return jax.vmap(lambda k: jax.random.uniform(k, proposals.shape[1:]))(uniform_keys)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.exp(jnp.take_along_axis(log_probs, proposals[..., None], axis=-1)[..., 0])


def select_reveals(confidence, fillable, block_masked, step, config: SamplerConfig) -> jax.Array:
  """Which fillable positions to reveal: the k most confident, k from the transfer schedule and
  capped at the positions left; or, with a threshold, all above it and at least the best one."""
  confidence = jnp.where(fillable, confidence, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-confidence, axis=1, stable=True), axis=1)
  if config.threshold is not None:
    return fillable & ((confidence > config.threshold) | (rank == 0))
  scheduled = transfer_schedule(block_masked, step, config.steps_per_block)
  count = jnp.minimum(scheduled, fillable.sum(axis=1))
  return fillable & (rank < count[:, None])


def block_slice(x: jax.Array, block, block_length: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, block * block_length, block_length, axis=1)


def fillable_in_block(state: DecodeState, config: SamplerConfig) -> jax.Array:
  """[B, block_length]: still masked, in the current block, and before the row's first stop."""
  stops = first_stop(state.canvas, state.masked, config.stop_ids)
  columns = state.block * config.block_length + jnp.arange(config.block_length)
  masked = block_slice(state.masked, state.block, config.block_length)
  return masked & (columns[None, :] < stops[:, None])


def update_canvas(state: DecodeState, logits: jax.Array, row_keys: jax.Array,
                  config: SamplerConfig, *, trace: bool = False) -> DecodeState:
  """One denoising step's update from the current block's logits [B, block_length, vocab]:
  propose, score, reveal the scheduled number of most confident fillable positions, advance the
  step counters. A pure function of its arguments (the cache is left to the caller)."""
  block_length = config.block_length
  masked = block_slice(state.masked, state.block, block_length)
  gumbel_keys, uniform_keys = step_keys(row_keys, state.block, state.step)
  proposals, logits = propose(logits, masked, config, gumbel_keys)
  confidence = confidence_of(logits, proposals, config, uniform_keys)
  reveal = select_reveals(confidence, fillable_in_block(state, config), state.block_masked,
                          state.step, config)

  start = state.block * block_length
  revealed = jnp.where(reveal, proposals, block_slice(state.canvas, state.block, block_length))
  canvas = jax.lax.dynamic_update_slice_in_dim(state.canvas, revealed, start, axis=1)
  masked = jax.lax.dynamic_update_slice_in_dim(state.masked, masked & ~reveal, start, axis=1)
  history = state.history.at[state.block, state.step].set(canvas) if trace else state.history
  return state.replace(canvas=canvas, masked=masked, step=state.step + 1,
                       forwards=state.forwards + 1, history=history)


def prepare_prompt(model: VidLaDA, prompt_ids, prompt_valid, pixel_values,
                   config: SamplerConfig) -> Prompt:
  """Embeds the prompts once (visual tokens encoded and spliced here, not per step) and lays out
  positions and the key mask of prompt + canvas; doubles the batch for classifier-free guidance."""
  batch = prompt_ids.shape[0]
  layout, num_visual = None, 0
  if pixel_values is None:
    embeddings = model.lm.embed(prompt_ids)
    valid = prompt_valid
  else:
    embeddings, layout = model.embed_multimodal(prompt_ids, pixel_values)
    num_visual = embeddings.shape[1] - prompt_ids.shape[1] + 1
    text_index = jnp.clip(layout.source_index, 0, prompt_ids.shape[1] - 1)
    valid = layout.is_visual | jnp.take_along_axis(prompt_valid, text_index, axis=1)
  key_mask = jnp.concatenate([valid, jnp.ones((batch, config.gen_length), bool)], axis=1)
  positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0).astype(jnp.int32)

  if config.cfg_scale > 0:
    # Unconditional branch: every prompt position replaced by the mask embedding.
    mask_embedding = model.lm.embed(jnp.asarray(config.tokens.mask))
    unconditional = jnp.broadcast_to(mask_embedding, embeddings.shape).astype(embeddings.dtype)
    embeddings = jnp.concatenate([embeddings, unconditional], axis=0)
    key_mask = jnp.concatenate([key_mask, key_mask], axis=0)
    positions = jnp.concatenate([positions, positions], axis=0)
    if layout is not None:
      layout = jax.tree.map(lambda x: jnp.concatenate([x, x], axis=0), layout)
  return Prompt(embeddings=embeddings, positions=positions, key_mask=key_mask, layout=layout,
                num_visual=num_visual,
                tokens_per_frame=model.config.tokens_per_frame if layout is not None else 1)


def block_logits(model: VidLaDA, policy: CachePolicy, prompt: Prompt, state: DecodeState,
                 config: SamplerConfig) -> tuple[jax.Array, object]:
  """The current block's logits [B, block_length, vocab] (float32, guidance applied) for the
  canvas of `state`, and the policy's new cache state."""
  canvas = model.lm.embed(state.canvas)
  if config.cfg_scale > 0:
    canvas = jnp.concatenate([canvas, canvas], axis=0)
  hidden, cache = policy.block_hidden(model, prompt, state.cache, canvas, block=state.block,
                                      block_step=state.step, step=state.forwards, config=config)
  logits = model.lm.logits(hidden)  # [B(x2), block, vocab] float32
  if config.cfg_scale > 0:
    conditional, unconditional = jnp.split(logits, 2, axis=0)
    logits = unconditional + (config.cfg_scale + 1) * (conditional - unconditional)
  return logits, cache


def _sample(model: VidLaDA, prompt_ids, prompt_valid, pixel_values, row_keys, *,
            config: SamplerConfig, policy: CachePolicy, trace: bool, mesh=None) -> SampleOutput:
  batch, gen = prompt_ids.shape[0], config.gen_length
  prompt = prepare_prompt(model, prompt_ids, prompt_valid, pixel_values, config)

  def denoise_step(state: DecodeState) -> DecodeState:
    logits, cache = block_logits(model, policy, prompt, state, config)
    return update_canvas(state.replace(cache=cache), logits, row_keys, config, trace=trace)

  def block_has_work(state: DecodeState):
    return fillable_in_block(state, config).any()

  def decode_block(state: DecodeState) -> DecodeState:
    masked_now = block_slice(state.masked, state.block, config.block_length).sum(axis=1)
    state = state.replace(step=jnp.int32(0), block_masked=masked_now.astype(jnp.int32))
    state = jax.lax.while_loop(
        lambda s: (s.step < config.max_steps_per_block) & block_has_work(s), denoise_step, state)
    return state.replace(block=state.block + 1)

  def work_left(state: DecodeState):
    stops = first_stop(state.canvas, state.masked, config.stop_ids)
    before_stop = jnp.arange(gen)[None, :] < stops[:, None]
    return (state.block < config.num_blocks) & (state.masked & before_stop).any()

  history_shape = ((config.num_blocks, config.max_steps_per_block, batch, gen) if trace else (0,))
  state = DecodeState(
      canvas=jnp.full((batch, gen), config.tokens.mask, jnp.int32),
      masked=jnp.ones((batch, gen), bool),
      block=jnp.int32(0), step=jnp.int32(0), block_masked=jnp.zeros(batch, jnp.int32),
      forwards=jnp.int32(0), history=jnp.full(history_shape, -1, jnp.int32),
      cache=policy.init(model, prompt, config, mesh))
  state = jax.lax.while_loop(work_left, decode_block, state)

  return SampleOutput(tokens=state.canvas,
                      lengths=first_stop(state.canvas, state.masked, config.stop_ids),
                      forwards=state.forwards,
                      history=state.history if trace else None)


@functools.partial(jax.jit, static_argnames=('graphdef', 'config', 'policy', 'trace', 'mesh'))
def _sample_program(graphdef, params, prompt_ids, prompt_valid, pixel_values, row_keys, *,
                    config, policy, trace, mesh=None):
  model = nnx.merge(graphdef, params)
  return _sample(model, prompt_ids, prompt_valid, pixel_values, row_keys,
                 config=config, policy=policy, trace=trace, mesh=mesh)


def padded_length(length: int, multiple_of: int = 1) -> int:
  """`length` rounded up to a multiple of `multiple_of`."""
  if multiple_of < 1:
    raise ValueError(f'pad_to_multiple_of must be at least 1, got {multiple_of}')
  return -(-length // multiple_of) * multiple_of


def pad_prompts(prompts, pad_id: int, multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Ragged prompts -> left-padded ids [B, L] and validity [B, L], L a multiple of `multiple_of`."""
  if isinstance(prompts, (np.ndarray, jax.Array)) and np.ndim(prompts) == 2:
    rows = list(np.asarray(prompts, np.int32))
  else:
    rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not rows or min(len(r) for r in rows) == 0:
    raise ValueError('every prompt needs at least one token')
  length = padded_length(max(len(r) for r in rows), multiple_of)
  ids = np.full((len(rows), length), pad_id, np.int32)
  valid = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, length - len(row):] = row
    valid[i, length - len(row):] = True
  return ids, valid


def generate(
    model: VidLaDA,
    input_ids,
    pixel_values=None,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = 'low_confidence',
    cfg_scale: float = 0.0,
    rng: jax.Array | None = None,
    stop_ids: Sequence[int] | str | None = 'eot',
    cache: CachePolicy | str | None = None,
    threshold: float | None = None,
    trace: bool = False,
    pad_to_multiple_of: int = 1,
) -> SampleOutput:
  """Decodes `gen_length` tokens after each prompt with block diffusion (SPEC 4).

  Args:
    model: a VidLaDA (needs a language model; a vision tower too when `pixel_values` is given).
    input_ids: int32 [B, L], or a list of B prompts of different lengths; with video, each holds
      one `<image>` placeholder (-200).
    pixel_values: optional frames [B, F, H, W, 3] in [-1, 1] (see `vj.preprocess_frames`).
    gen_length, steps, block_length: canvas length, total denoising steps, block size;
      gen_length % block_length == 0 and steps % (gen_length / block_length) == 0.
    temperature: 0 for greedy proposals, > 0 for Gumbel-max sampling.
    remasking: "low_confidence" (reveal the most probable proposals) or "random".
    cfg_scale: classifier-free guidance; > 0 adds an unconditional pass (prompt fully masked).
    rng: a PRNG key, or one key per row ([B] keys); needed when temperature > 0 or
      remasking == "random". Row b uses its own key, so rows are independent of each other.
    stop_ids: tokens that end the answer: by default ('eot') the model's `<|eot_id|>`
      (`model.config.tokens.eot`); None or () for none.
    cache: the cache policy: `FullRecompute()` (the default: every step recomputes every layer
      over the whole sequence, as the reference does), `MarsCache()` (MARS-Cache: see
      `vidlada_jax.mars`; `MarsCache.exact()` turns every mechanism off) or `DualCache()`
      (Fast-dLLM's block-wise dual cache); or a name of `vidlada_jax.policies.CACHE_POLICIES`
      ('none', 'mars', 'dual', ...).
    threshold: Fast-dLLM parallel decoding: at each step reveal every fillable position whose
      confidence exceeds it (at least one), until the block is full; `steps` then only needs to
      satisfy the divisibility rule. Off by default.
    trace: also return the canvas after every step (`history`).
    pad_to_multiple_of: left-pad the prompts to a multiple of this many tokens, so that prompts of
      nearby lengths share one compiled program (each new padded length compiles anew). The
      tokens do not change: padding is hidden from attention and not counted in positions.

  Returns:
    SampleOutput with `tokens` [B, gen_length] (the final canvas; positions after a stop stay
    the mask id) and `lengths` [B] (tokens before the first stop id, else gen_length).
  """
  if model.lm is None:
    raise ValueError('generate needs a language model; this model has none')
  policy = _policy_of(cache)
  config = SamplerConfig(gen_length=gen_length, steps=steps, block_length=block_length,
                         temperature=float(temperature), remasking=remasking,
                         cfg_scale=float(cfg_scale),
                         stop_ids=((model.config.tokens.eot,) if stop_ids == 'eot'
                                   else tuple(stop_ids or ())),
                         threshold=None if threshold is None else float(threshold),
                         tokens=model.config.tokens)
  ids, valid = pad_prompts(input_ids, model.config.tokens.eos, pad_to_multiple_of)
  if pixel_values is not None:
    if model.vision_tower is None:
      raise ValueError('pixel_values were given but this model has no vision tower')
    check_image_placeholders(ids, model.config.tokens.image)
    pixel_values = jnp.asarray(pixel_values)
    if pixel_values.ndim != 5 or pixel_values.shape[0] != ids.shape[0]:
      raise ValueError(f'pixel_values must be [batch={ids.shape[0]}, frames, H, W, 3], got '
                       f'{tuple(pixel_values.shape)}')
  elif np.any(ids == model.config.tokens.image):
    raise ValueError('a prompt holds an <image> placeholder (-200) but no pixel_values were given')
  needs_rng = config.temperature > 0 or config.remasking == 'random'
  if rng is None:
    if needs_rng:
      raise ValueError('temperature > 0 and remasking="random" need rng (a jax.random key)')
    rng = jax.random.key(0)
  row_keys = _row_keys(rng, ids.shape[0])
  graphdef, params = nnx.split(model)
  mesh = _mesh_of(params)
  # A sharded model decodes under its mesh, so that kernels XLA cannot partition run per shard.
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    return _sample_program(graphdef, params, jnp.asarray(ids), jnp.asarray(valid), pixel_values,
                           row_keys, config=config, policy=policy, trace=trace,
                           mesh=mesh)


def _mesh_of(params) -> Mesh | None:
  """The mesh the parameters are sharded over, if any (caches are laid out over it too)."""
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, 'sharding', None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


def _row_keys(rng, batch: int) -> jax.Array:
  """One typed key per row, from a single key (split) or one key per row."""
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)  # legacy uint32 keys: [2] is one key, [B, 2] are B
  if rng.ndim == 0:
    return jax.random.split(rng, batch)
  if rng.shape[0] != batch:
    raise ValueError(f'rng holds {rng.shape[0]} keys for {batch} prompts; '
                     'pass one key or one per row')
  return rng


def _policy_of(cache) -> CachePolicy:
  """`generate`'s cache argument as a policy: a policy, a registered name, or None (plain)."""
  if cache is None:
    return FullRecompute()
  if isinstance(cache, str):
    from vidlada_jax.policies import cache_policy  # pylint: disable=g-import-not-at-top
    return cache_policy(cache)
  if not (hasattr(cache, 'init') and hasattr(cache, 'block_hidden')):
    raise TypeError(f'cache must be a cache policy (FullRecompute(), MarsCache(), DualCache()) or '
                    f'its name, got {type(cache).__name__}')
  return cache
