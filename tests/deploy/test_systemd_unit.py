"""deploy/systemd: the unit is valid for systemd (`systemd-analyze verify`, where the
machine has it), carries the hardening and stop settings the operations guide promises,
and its config and environment files are what `petrel serve` accepts."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from deploy_support import (
    check_config_starts,
    deploy_path,
    read_text,
    serve_env_names,
    tool,
)

from petrel.settings import StoreConfig
from petrel_gateway.settings import GatewaySettings

UNIT = deploy_path("systemd", "petrel.service")
INSTALLED_PETREL = "/opt/petrel/venv/bin/petrel"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number} outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(read_text(UNIT))


def test_unit_hardening(unit) -> None:  # type: ignore[no-untyped-def]
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["User"] == "petrel" and one["Group"] == "petrel"
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["PrivateTmp"] == "yes"
    assert one["ProtectHome"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    # ProtectSystem=strict makes everything read-only: the data directory must be the
    # one writable path, and the one the config names.
    assert one["ReadWritePaths"] == "/var/lib/petrel"
    assert one["StateDirectory"] == "petrel"
    assert 'data = "/var/lib/petrel"' in read_text(deploy_path("systemd", "petrel.toml"))
    assert int(one["LimitNOFILE"]) >= 65536
    assert one["Restart"] == "on-failure"
    assert "2" in one["RestartPreventExitStatus"].split()  # config errors exit 2


def test_unit_stop_outlasts_the_drain(unit) -> None:  # type: ignore[no-untyped-def]
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["KillSignal"] == "SIGTERM"
    drain_s = GatewaySettings().shutdown_drain_s
    # With a remote backend the close also uploads the last segment (bounded by
    # close_upload_timeout_s where the engine has it).
    upload_s = getattr(StoreConfig(data_dir="/unused"), "close_upload_timeout_s", 0.0)
    assert _seconds(service["TimeoutStopSec"]) > drain_s + upload_s
    toml = read_text(deploy_path("systemd", "petrel.toml"))
    configured = re.search(r"^shutdown_drain_s\s*=\s*([\d.]+)", toml, re.M)
    assert configured is not None
    assert _seconds(service["TimeoutStopSec"]) > float(configured.group(1)) + upload_s


def test_unit_runs_the_installed_command(unit) -> None:  # type: ignore[no-untyped-def]
    exec_start = unit["Service"]["ExecStart"][-1].split()
    assert exec_start[:2] == [INSTALLED_PETREL, "serve"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/petrel/petrel.toml"
    # The client keys reach the service through LoadCredential (%d: its directory).
    name = unit["Service"]["LoadCredential"][-1].split(":", 1)[0]
    assert exec_start[exec_start.index("--credentials-file") + 1] == f"%d/{name}"


@pytest.mark.skipif(tool("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`systemd-analyze verify` with the installed path replaced by this venv's petrel
    (verify checks that ExecStart's binary exists). It exits 0 even for unknown keys or
    unparsable values, which it only warns about: any output is a failure."""
    petrel = tool("petrel")
    assert petrel is not None
    unit_copy = tmp_path / "petrel.service"
    unit_copy.write_text(read_text(UNIT).replace(INSTALLED_PETREL, petrel), encoding="utf-8")
    analyze = tool("systemd-analyze")
    assert analyze is not None
    done = subprocess.run([analyze, "verify", str(unit_copy)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr


def test_environment_file_is_assignments() -> None:
    for number, raw in enumerate(read_text(deploy_path("systemd", "petrel.env"))
                                 .splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"PETREL_[A-Z0-9_]+=.*", line), f"petrel.env:{number}: {raw!r}"
    # The variables it offers (commented out or not) are ones petrel serve reads.
    offered = set(re.findall(r"^#?(PETREL_[A-Z0-9_]+)=", read_text(
        deploy_path("systemd", "petrel.env")), re.M))
    assert offered and offered <= serve_env_names(), offered - serve_env_names()


def test_sysusers_declares_the_unit_user() -> None:
    fields = read_text(deploy_path("systemd", "petrel.sysusers.conf")).split("\n")
    entries = [line.split() for line in fields if line.strip() and not line.startswith("#")]
    assert entries and entries[0][:2] == ["u", "petrel"]


def test_systemd_config_starts_petrel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    check_config_starts(deploy_path("systemd", "petrel.toml"), str(tmp_path))


def test_install_guide_names_the_shipped_files() -> None:
    guide = read_text(deploy_path("systemd", "README.md"))
    for name in os.listdir(deploy_path("systemd")):
        if name != "README.md":
            assert name in guide, f"deploy/systemd/README.md does not mention {name}"
