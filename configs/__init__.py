"""ml_collections configs: named model architectures, mesh layouts and (later) jobs."""
