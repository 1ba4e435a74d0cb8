"""Issue 8: a config file with an unknown key or a bad value fails at start with a clear
message. "Clear" is checked as an operator meets it under systemd or Kubernetes: exit
status 2 (petrel.service does not restart on it: RestartPreventExitStatus=2), nothing
served, and one line on stderr naming the setting (and where it came from).

tests/gateway/test_serve.py covers the first cases (unknown key and section, a
non-number port, an unknown durability, a too-small segment size); these cover the rest
of what an operator can get wrong.
"""

from __future__ import annotations

import os

import pytest
from deploy_support import clean_env, run_serve, stop_serve

CONFIG_ERROR_EXIT = 2


def _start_with(tmp_path, toml_text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    config = tmp_path / "petrel.toml"
    config.write_text(toml_text, encoding="utf-8")
    base = clean_env()
    base.update(env or {})
    # Flags win over the file: --port only where the file does not set the port.
    port = [] if "port =" in toml_text else ["--port", "0"]
    return run_serve(["--config", str(config), "--data", str(tmp_path / "data"),
                      "--host", "127.0.0.1", *port,
                      "--access-key", "PKCONFIGTEST", "--secret-key", "config-test-secret"],
                     env=base)


def _assert_refused(outcome, *needles: str) -> None:  # type: ignore[no-untyped-def]
    if outcome.process is not None:
        stop_serve(outcome.process)
        pytest.fail(f"petrel serve started with a bad config:\n{outcome.output}")
    assert outcome.returncode == CONFIG_ERROR_EXIT, outcome.output
    lines = [line for line in outcome.output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{outcome.output}"
    assert lines[0].startswith("petrel serve: configuration error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("text,needles", [
    # A typo in a key operators set often: named with its section and the file.
    ("[store]\ndurabilty = \"always\"\n", ("unknown key store.durabilty", "petrel.toml")),
    ("[server]\nshutdown_drain = 30\n", ("unknown key server.shutdown_drain",)),
    # A key at top level instead of inside its section.
    ("durability = \"always\"\n", ("durability",)),
    # Wrong TOML types.
    ("[server]\nport = true\n", ("server.port", "petrel.toml")),
    ("[store]\nseal_idle_s = \"soon\"\n", ("store.seal_idle_s", "must be a number")),
    ("[auth]\npublic_read_buckets = 5\n", ("auth.public_read_buckets",)),
    # Out of range.
    ("[server]\nport = 70000\n", ("server.port", "70000")),
    ("[store]\ncompaction_dead_fraction = 1.5\n", ("compaction_dead_fraction",)),
    # The S3 backend section.
    ("[backend]\nurl = \"s3://b/p\"\npath_style = \"maybe\"\n", ("backend.path_style",)),
    ("[backend]\nendpoint = \"http://127.0.0.1:1\"\n", ("backend.endpoint", "URL")),
    ("[backend]\nurl = \"http://bucket/prefix\"\n", ("s3://BUCKET/PREFIX",)),
    ("[backend]\nurl = \"s3://b/p\"\nbogus = 1\n", ("unknown key backend.bogus",)),
    # Not TOML at all: the parser's position is in the message.
    ("[server\nport = 9000\n", ("petrel.toml", "line 1")),
])
def test_bad_config_file_refused(tmp_path, text, needles) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, text), *needles)


def test_bad_environment_value_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    outcome = _start_with(tmp_path, "[server]\nlog_level = \"info\"\n",
                          {"PETREL_INFLIGHT_REQUESTS_MAX": "lots"})
    _assert_refused(outcome, "PETREL_INFLIGHT_REQUESTS_MAX", "inflight_requests_max")


def test_missing_credentials_file_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = os.path.join(str(tmp_path), "no-such-credentials")
    outcome = _start_with(tmp_path, f"[auth]\ncredentials_file = \"{missing}\"\n")
    _assert_refused(outcome, missing)


# Values that cannot work: range-checked by petrel/cli/serve.py and the settings objects.
def test_unknown_log_level_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, "[server]\nlog_level = \"loud\"\n"),
                    "server.log_level")


def test_zero_inflight_limit_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, "[server]\ninflight_requests_max = 0\n"),
                    "inflight_requests_max")


def test_negative_seal_idle_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, "[store]\nseal_idle_s = -5\n"), "seal_idle_s")


def test_negative_timeouts_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, "[server]\nshutdown_drain_s = -1\n"),
                    "shutdown_drain_s")


def test_bad_qos_table_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(_start_with(tmp_path, "[qos]\nkey_requests_per_s = -1\n"),
                    "qos")
    _assert_refused(_start_with(tmp_path, "[qos.keys.AK1]\nspeed = 3\n"),
                    "qos.keys.AK1.speed")


def test_half_a_tls_configuration_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    _assert_refused(_start_with(tmp_path, f"[server]\ntls_cert_file = \"{cert}\"\n"),
                    "tls_key_file")
    _assert_refused(_start_with(tmp_path, f"[server]\ntls_cert_file = \"{cert}\"\n"
                                f"tls_key_file = \"{cert}\"\n"), "TLS certificate")
