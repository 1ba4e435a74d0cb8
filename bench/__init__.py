"""Benchmarks for petrel. Timings live here, never as assertions in tests.

`python -m bench.engine` measures the engine in-process (no HTTP) against the plain
filesystem on the same machine, in the same run, and writes `bench/results/`.
"""
