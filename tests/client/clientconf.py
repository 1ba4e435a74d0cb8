"""Helpers shared by tests/client (imported top-level, like tests/gateway/rawhttp.py):
petreloss.conf files and the retry policy the tests run under."""

from __future__ import annotations

from pathlib import Path

from rawhttp import ACCESS_KEY, SECRET_KEY

from petrel.transport import RetryPolicy

# Retries stay on (the client's normal mode) but bounded tightly for tests.
TEST_RETRY = RetryPolicy(attempts_max=3, backoff_first_s=0.01, backoff_max_s=0.1,
                         elapsed_s_max=5.0)


def write_conf(path: Path, endpoint: str, *, default: str | None = "local",
               access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Path:
    """A petreloss.conf with clusters `local` and `other`, both at `endpoint`."""
    lines = ["[DEFAULT]"]
    if default is not None:
        lines.append(f"default_cluster = {default}")
    for name in ("local", "other"):
        lines += [f"[{name}]", f"host_base = {endpoint}", f"access_key = {access_key}",
                  f"secret_key = {secret_key}"]
    # petrel_client confs carry sections that are not clusters; they must be tolerated.
    lines += ["[mc]", "mc_key_cb = sha256"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
