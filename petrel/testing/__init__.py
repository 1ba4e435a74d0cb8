"""Helpers for tests, benchmarks and local stacks (like aiohttp.test_utils): shipped
with the package so `bench/`, `tests/` and `deploy/` share one copy. The engine never
imports them."""
