"""Pallas kernels (TPU and GPU) behind `vidlada_jax.nn.attention`'s backend registry.

Every kernel takes `interpret=` so the same tests run on CPU; none is registered yet: the dense
XLA backend is the reference the block-sparse kernels will be checked against.
"""
