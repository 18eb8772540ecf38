"""Speed and quality benchmarks of the diffae families against the FLUX.2 VAE (see README.md).

Run from the repository root: `uv run python -m benchmarks.speed` and
`uv run python -m benchmarks.quality`.
"""
