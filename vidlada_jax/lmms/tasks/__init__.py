"""lmms-eval task directories (YAML + utils.py) of vidlada-jax; see synthetic_video_qa/."""
