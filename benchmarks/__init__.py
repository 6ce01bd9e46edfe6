"""Benchmarks for guide_jax: `python -m benchmarks.pca` and `python -m benchmarks.train` (see --help)."""
