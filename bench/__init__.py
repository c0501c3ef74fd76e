"""Benchmarks: `python -m bench.<name>`; product code never imports this package."""
