"""Weight conversion between the PyTorch checkpoints and orbax checkpoints."""
