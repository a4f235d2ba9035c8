"""Attention kernels behind `vidlada_jax.nn.attention`'s backends.

`block_sparse` is the op (frame-window block-sparse attention, MARS-Cache's chunk attention) with
its metadata, block table and dense reference; `xla_gather`, `gpu` (Pallas Triton) and `tpu`
(Pallas Mosaic) implement it; `dense` adapts cuDNN and splash attention for plain attention.
`_gpu_api` and `_tpu_api` hold the fast-moving Pallas APIs. Every kernel takes `interpret=` so
the same tests run on CPU. `python -m vidlada_jax.launch.bench_kernels` times them on the
current device.
"""
