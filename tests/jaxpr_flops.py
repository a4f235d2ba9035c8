"""FLOPs of the matrix products a jaxpr would run: an independent count for the analytic ones."""

import numpy as np
from jax.extend import core as jax_core


def dot_flops(jaxpr) -> int:
  """Multiply-adds x 2 of every dot_general in a jaxpr, loops counted by their trip count."""
  flops = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      contracted = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      flops += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(contracted)
    repeat = eqn.params['length'] if eqn.primitive.name == 'scan' else 1
    for param in eqn.params.values():
      if isinstance(param, jax_core.ClosedJaxpr):
        flops += repeat * dot_flops(param.jaxpr)
      elif isinstance(param, jax_core.Jaxpr):
        flops += repeat * dot_flops(param)
  return flops
