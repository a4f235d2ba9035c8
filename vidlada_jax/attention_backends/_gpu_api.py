"""The few Pallas GPU (Triton) APIs that move between jax releases, in one place.

`vidlada_jax.attention_backends.gpu` imports these names instead of reaching into
`jax.experimental.pallas.triton` or jax's private modules, so a jax upgrade that renames or moves
one is fixed here and checked by `tests/test_block_sparse.py::test_gpu_api_*`. What has moved so
far:

  - the compiler params class: `TritonCompilerParams` until jax 0.5, `CompilerParams` since;
  - the custom call a Triton kernel lowers to: up to jaxlib 0.10.2 the Triton IR travels inside
    `__gpu$xla.gpu.triton` and XLA compiles it; later jaxlibs compile it while lowering (which
    needs the CUDA plugin's compiler) and emit `triton_kernel_call_ffi`.
"""

from __future__ import annotations

import jax
from jax.experimental.pallas import triton as _triton

# Every custom call target a Pallas Triton kernel may lower to, in any supported jax.
TRITON_CUSTOM_CALLS = ('__gpu$xla.gpu.triton', 'triton_kernel_call_ffi')


def compiler_params(*, num_warps: int | None = None, num_stages: int | None = None):
  """Triton compiler parameters for `pl.pallas_call(compiler_params=...)`."""
  params_class = getattr(_triton, 'CompilerParams', None) or getattr(_triton,
                                                                     'TritonCompilerParams')
  return params_class(num_warps=num_warps, num_stages=num_stages)


def export_safety_exemptions() -> list[jax.export.DisabledSafetyCheck]:
  """What `jax.export.export(..., disabled_checks=)` needs to serialise a Triton kernel: its
  custom call is not on the list of targets with a stability guarantee."""
  return [jax.export.DisabledSafetyCheck.custom_call(name) for name in TRITON_CUSTOM_CALLS]


def can_lower_for_cuda() -> bool:
  """Whether this install can lower a Triton kernel for CUDA (e.g. `jax.export` with
  platforms=['cuda']) without a GPU: always up to jaxlib 0.10.2, which defers compilation to XLA;
  later only where the CUDA plugin registered its Triton compiler."""
  from jax._src.lib import version as jaxlib_version  # pylint: disable=g-import-not-at-top
  if jaxlib_version <= (0, 10, 2):
    return True
  try:
    from jax._src.lib import triton  # pylint: disable=g-import-not-at-top
    return triton.has_compilation_handler('cuda')
  except (ImportError, AttributeError):
    return False
