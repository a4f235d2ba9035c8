"""The masked-diffusion training objective (SPEC 3, SFT form).

Per sample: draw t ~ U(0, 1), p = (1 - eps) t + eps; mask every label-bearing token with
probability p by replacing its input embedding with the mask token's embedding (visual tokens and
ignored prompt tokens are never masked); the loss is

    mean over samples of  sum over masked i of CE(logits_i, label_i) / (p * n_labels)

Logits are computed only at masked positions: the masked positions are packed to the front of a
buffer the size of the text (visual tokens never carry labels, so no more can be masked), and the
vocabulary projection and cross-entropy run over that buffer in chunks, under `jax.checkpoint`,
so the [tokens, vocab] logits never exist at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vidlada_jax.vidlada import VidLaDA

IGNORE = -100
EPS = 1e-3


@struct.dataclass
class LossAux:
  per_sample: jax.Array  # [B] each sample's normalised loss
  t: jax.Array  # [B]
  p: jax.Array  # [B] masking probability
  masked: jax.Array  # [B, L'] which positions were masked
  num_labels: jax.Array  # [B] label-bearing tokens


def _chunked_cross_entropy(model: VidLaDA, hidden, targets, weights, chunk: int) -> jax.Array:
  """sum_i weights_i * CE(lm_head(hidden_i), targets_i) per row; hidden [B, K, E]."""
  batch, length, width = hidden.shape
  chunk = min(chunk, length)
  pad = -length % chunk
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  weights = jnp.pad(weights, ((0, 0), (0, pad)))
  pieces = (length + pad) // chunk

  @jax.checkpoint
  def chunk_loss(total, xs):
    h, y, w = xs
    logits = model.lm.logits(h)  # [B, chunk, vocab] float32
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
    return total + jnp.sum(w * nll, axis=1), None

  split = lambda x: jnp.moveaxis(x.reshape(batch, pieces, chunk, *x.shape[2:]), 1, 0)
  total, _ = jax.lax.scan(chunk_loss, jnp.zeros(batch, jnp.float32),
                          (split(hidden), split(targets), split(weights)))
  return total


def masked_diffusion_loss(model: VidLaDA, input_ids, labels, rng, pixel_values=None, *,
                          eps: float = EPS, chunk: int = 1024) -> tuple[jax.Array, LossAux]:
  """The loss of one batch and what produced it.

  Args:
    input_ids: int32 [B, L] (right-padded with EOS); with video, one -200 per row.
    labels: int32 [B, L], the target of every position or IGNORE (-100); see
      `vidlada_jax.input_pipeline.chat.sft_example`.
    rng: one key; t and the masks are drawn from it.
    pixel_values: optional frames [B, F, H, W, 3].
  """
  if pixel_values is not None:
    embeddings, layout = model.embed_multimodal(input_ids, pixel_values)
    text_labels = jnp.take_along_axis(
        labels, jnp.clip(layout.source_index, 0, labels.shape[1] - 1), axis=1)
    labels = jnp.where(layout.is_visual, IGNORE, text_labels)
    text_length = input_ids.shape[1] - 1
  else:
    embeddings = model.lm.embed(input_ids)
    text_length = input_ids.shape[1]
  batch = labels.shape[0]
  has_label = labels != IGNORE

  t_key, mask_key = jax.random.split(rng)
  t = jax.random.uniform(t_key, (batch,))
  p = (1 - eps) * t + eps
  masked = has_label & (jax.random.uniform(mask_key, labels.shape) < p[:, None])
  mask_embedding = model.lm.embed(jnp.asarray(model.config.tokens.mask))
  inputs = jnp.where(masked[..., None], mask_embedding.astype(embeddings.dtype), embeddings)
  hidden = model.lm(inputs)

  # Pack the masked positions to the front (stable, so in order); at most text_length of them.
  order = jnp.argsort(~masked, axis=1, stable=True)[:, :text_length]
  packed_hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
  packed_targets = jnp.take_along_axis(jnp.where(masked, labels, 0), order, axis=1)
  packed_weights = jnp.take_along_axis(masked, order, axis=1).astype(jnp.float32)
  ce = _chunked_cross_entropy(model, packed_hidden, packed_targets, packed_weights, chunk)

  num_labels = has_label.sum(axis=1)
  per_sample = jnp.where(num_labels > 0, ce / (p * jnp.maximum(num_labels, 1)), 0.0)
  aux = LossAux(per_sample=per_sample, t=t, p=p, masked=masked, num_labels=num_labels)
  return per_sample.mean(), aux
