"""Benchmarks: `python -m bench NAME [options]` runs one, `python -m bench all --quick` runs all."""
