"""The PyTorch (Hugging Face) checkpoint formats: names, config.json, safetensors files."""
