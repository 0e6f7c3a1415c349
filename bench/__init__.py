"""Benchmarks run on demand against a running service; not part of the tests."""
