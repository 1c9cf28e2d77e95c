"""Benchmarks and evaluations; each runs as ``python -m bench.<name>`` and prints its own table."""
