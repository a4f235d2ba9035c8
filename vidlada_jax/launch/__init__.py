"""Entry points: the demo, sampling and benchmarks (`python -m launch.<name>`)."""
