"""Benchmarks: each module prints numbers (`python -m bench.<name>`); none asserts timings."""
