"""Cache policies by name: what `--cache` takes on every command line and `Answerer(cache=...)`.

    none          plain decoding: every step recomputes everything (the reference)
    mars          MARS-Cache with its measured defaults
    mars-exact    MARS-Cache with every mechanism off (equals plain decoding)
    mars-refresh  asynchronous refresh alone
    mars-chunk    frame-wise chunk attention alone (recomputed at every step)
    mars-anchors  chunk attention with anchor tokens (recomputed at every step)
    dual          Fast-dLLM's block-wise dual cache

The single mechanisms exist to measure what each one costs and saves.
"""

from __future__ import annotations

from vidlada_jax.mars import DualCache, MarsCache
from vidlada_jax.sampling import CachePolicy, FullRecompute

# Recompute every row at every step, so that only the named mechanism differs from plain decoding.
_EVERY_STEP = dict(pyramid=(1, 1), visual_ratio=1)

CACHE_POLICIES: dict[str, CachePolicy] = {
    'none': FullRecompute(),
    'mars': MarsCache(),
    'mars-exact': MarsCache.exact(),
    'mars-refresh': MarsCache(frame_window=None, num_anchors=0),
    'mars-chunk': MarsCache(**_EVERY_STEP, num_anchors=0),
    'mars-anchors': MarsCache(**_EVERY_STEP),
    'dual': DualCache(),
}

DESCRIPTIONS = {
    'none': 'plain decoding (every step recomputes everything)',
    'mars': 'MARS-Cache default',
    'mars-exact': 'MARS-Cache, every mechanism off',
    'mars-refresh': 'asynchronous refresh alone',
    'mars-chunk': 'frame-wise chunk attention alone',
    'mars-anchors': 'chunk attention + anchor tokens',
    'dual': 'Fast-dLLM dual cache',
}


def cache_policy(name: str) -> CachePolicy:
  """The policy called `name`; a ValueError lists the names there are."""
  try:
    return CACHE_POLICIES[name]
  except KeyError:
    raise ValueError(f'unknown cache policy {name!r}; expected one of '
                     f'{", ".join(CACHE_POLICIES)}') from None
