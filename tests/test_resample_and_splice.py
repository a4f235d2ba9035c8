"""Bilinear resampling (vs torch), the newline grid and the splice layout (hand-derived)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidlada_jax.vidlada import (append_row_newlines, bilinear_weights, resize_bilinear, splice,
                                 splice_layout)


@pytest.mark.parametrize('in_hw, out_hw', [
    ((27, 27), (14, 14)),  # the reference: ceil(27 / 2)
    ((7, 7), (4, 4)),
    ((5, 9), (3, 5)),
    ((14, 14), (7, 7)),
    ((4, 4), (9, 9)),  # upsampling clamps the source index at 0
    ((1, 3), (1, 2)),
])
def test_bilinear_matches_torch_interpolate(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 5)).astype(np.float32)
  expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode='bilinear',
                           align_corners=False).permute(0, 2, 3, 1).numpy()
  ours = np.asarray(resize_bilinear(jnp.asarray(x), *out_hw))
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_bilinear_weights_equal_torch_bit_for_bit():
  for in_size in range(1, 30):
    for out_size in range(1, 30):
      basis = torch.eye(in_size).reshape(in_size, 1, 1, in_size)  # one-hot rows probe the weights
      theirs = F.interpolate(basis, size=(1, out_size), mode='bilinear', align_corners=False)
      np.testing.assert_array_equal(
          bilinear_weights(in_size, out_size), theirs.reshape(in_size, out_size).T.numpy(),
          err_msg=f'{in_size} -> {out_size}')


def test_bilinear_weights_by_hand():
  # 4 -> 2: scale 2, src = (i + 0.5) * 2 - 0.5 = 0.5, 2.5 -> halfway between neighbours.
  np.testing.assert_allclose(bilinear_weights(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  # 3 -> 2: scale 1.5, src = 0.25, 1.75.
  np.testing.assert_allclose(bilinear_weights(3, 2), [[0.75, 0.25, 0], [0, 0.25, 0.75]])
  # Not jax.image.resize: its default antialiasing would spread 4 -> 2 over all four inputs.
  assert bilinear_weights(4, 2)[0, 3] == 0


def test_newline_after_every_row():
  grid = jnp.arange(2 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 2, 1)  # 2 frames of 2x2
  tokens = append_row_newlines(grid, jnp.array([-1.0]))
  # frame-major, row-major, a newline closing each row: 2 x (2 + 1) = 6 tokens per frame
  assert tokens.shape == (2, 6, 1)
  np.testing.assert_array_equal(tokens[..., 0], [[0, 1, -1, 2, 3, -1], [4, 5, -1, 6, 7, -1]])


def test_splice_layout_by_hand():
  # prompt [a b <image> c], 2 frames of 3 tokens -> [a b v0 v1 v2 v3 v4 v5 c]
  ids = jnp.array([[10, 11, -200, 12], [-200, 20, 21, 22]])
  layout = splice_layout(ids, num_visual=6, tokens_per_frame=3, image_id=-200)
  np.testing.assert_array_equal(layout.is_visual[0], [0, 0, 1, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(layout.source_index[0], [0, 1, 0, 1, 2, 3, 4, 5, 3])
  np.testing.assert_array_equal(layout.frame_id[0], [-1, -1, 0, 0, 0, 1, 1, 1, -1])
  np.testing.assert_array_equal(layout.image_start, [2, 0])
  np.testing.assert_array_equal(layout.is_visual[1], [1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(layout.source_index[1], [0, 1, 2, 3, 4, 5, 1, 2, 3])
  np.testing.assert_array_equal(layout.positions[1], np.arange(9))

  text = jnp.asarray(ids, jnp.float32)[..., None] * 1.0  # each text embedding = its id
  visual = -(1.0 + jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1))
  spliced = splice(text, visual, layout)[..., 0]
  np.testing.assert_array_equal(spliced[0], [10, 11, -1, -2, -3, -4, -5, -6, 12])
  np.testing.assert_array_equal(spliced[1], [-7, -8, -9, -10, -11, -12, 20, 21, 22])
