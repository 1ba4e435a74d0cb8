"""deploy/kubernetes: every built-in resource validates, strictly (no unknown field),
against the Kubernetes OpenAPI schemas that PyPI `kubernetes-validate` ships, for the
oldest and newest versions we support. The ServiceMonitor is a CRD whose schema that
package does not have (and whose upstream schema is not vendored here): it is checked
field by field against the monitoring.coreos.com/v1 structure, explicitly below. Then the
pieces are checked against each other: selectors, names, ports, keys, probes."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import check_config_starts, deploy_path, read_text, serve_env_names

from petrel.settings import StoreConfig
from petrel_gateway.settings import GatewaySettings

K8S_DIR = deploy_path("kubernetes")
# Oldest we support (StatefulSet persistentVolumeClaimRetentionPolicy is on by default
# from 1.27) and the newest schemas the package ships.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

Doc = dict[str, Any]


def _load() -> list[tuple[str, Doc]]:
    docs = []
    for name in sorted(os.listdir(K8S_DIR)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            for doc in yaml.safe_load_all(read_text(os.path.join(K8S_DIR, name))):
                if doc is not None:
                    docs.append((name, doc))
    return docs


DOCS = _load()


def _one(kind: str, name: str | None = None) -> Doc:
    found = [d for _, d in DOCS if d["kind"] == kind and
             (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _builtin() -> list[tuple[str, Doc]]:
    return [(f, d) for f, d in DOCS if "monitoring.coreos.com" not in d["apiVersion"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("filename,doc", _builtin(),
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in _builtin()])
def test_schema_valid(filename: str, doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{filename} {doc['kind']}: {exc.message} at {list(exc.path)}")


def test_schema_check_catches_a_typo() -> None:
    """The validation is strict for real: a misspelt probe field is refused."""
    bad = copy.deepcopy(_one("StatefulSet"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(read_text(os.path.join(K8S_DIR, "kustomization.yaml")))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted({f for f, _ in DOCS})


# ----- the ServiceMonitor, checked explicitly (CRD: no schema in kubernetes-validate) ----
_SM_SPEC_FIELDS = {"selector", "endpoints", "namespaceSelector", "jobLabel",
                   "targetLabels", "podTargetLabels", "sampleLimit"}
_SM_ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                       "honorLabels", "relabelings", "metricRelabelings", "params",
                       "tlsConfig", "bearerTokenSecret", "authorization", "basicAuth"}
_DURATION = re.compile(r"(\d+(ms|s|m|h))+")


def test_servicemonitor_structure() -> None:
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", monitor["metadata"]["name"])
    spec = monitor["spec"]
    assert set(spec) <= _SM_SPEC_FIELDS, set(spec) - _SM_SPEC_FIELDS
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    assert all(isinstance(v, str) for v in spec["selector"]["matchLabels"].values())
    assert spec["endpoints"], "at least one endpoint"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= _SM_ENDPOINT_FIELDS, set(endpoint) - _SM_ENDPOINT_FIELDS
        assert endpoint["path"] == "/metrics"
        assert endpoint.get("scheme", "http") in ("http", "https")
        for key in ("interval", "scrapeTimeout"):
            assert _DURATION.fullmatch(endpoint[key]), f"{key}: {endpoint[key]!r}"
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_servicemonitor_scrapes_exactly_one_service() -> None:
    monitor = _one("ServiceMonitor")
    services = [d for _, d in DOCS if d["kind"] == "Service" and
                _matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])]
    assert len(services) == 1, "a pod scraped through two Services is counted twice"
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


# ----- the pieces fit together -------------------------------------------------------------
def _pod() -> Doc:
    return _one("StatefulSet")["spec"]["template"]


def _container() -> Doc:
    containers = _pod()["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_statefulset_wiring() -> None:
    statefulset = _one("StatefulSet")
    spec = statefulset["spec"]
    labels = _pod()["metadata"]["labels"]
    assert _matches(spec["selector"]["matchLabels"], labels)
    headless = _one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for _, service in DOCS:
        if service["kind"] == "Service":
            assert _matches(service["spec"]["selector"], labels)
    assert spec["replicas"] == 1  # index + unsealed tail belong to one process
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert mounts["data"] == "/var/lib/petrel" and "data" in claims
    toml = _one("ConfigMap")["data"]["petrel.toml"]
    assert 'data = "/var/lib/petrel"' in toml


def test_probes_and_resources() -> None:
    container = _container()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert http["port"] in port_names, probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_security_context() -> None:
    pod_context = _pod()["spec"]["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] != 0
    assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
    container_context = _container()["securityContext"]
    assert container_context["allowPrivilegeEscalation"] is False
    assert container_context["readOnlyRootFilesystem"] is True
    assert container_context["capabilities"]["drop"] == ["ALL"]
    # The image's user (deploy/container/Dockerfile ARG PETREL_UID) is the pod's.
    uid = re.search(r"^ARG PETREL_UID=(\d+)", read_text(deploy_path("container",
                                                                     "Dockerfile")), re.M)
    assert uid is not None and int(uid.group(1)) == pod_context["runAsUser"]


def test_grace_period_outlasts_the_drain() -> None:
    spec = _pod()["spec"]
    upload_s = getattr(StoreConfig(data_dir="/unused"), "close_upload_timeout_s", 0.0)
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_s = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] > \
        pre_stop_s + GatewaySettings().shutdown_drain_s + upload_s


def test_secret_and_config_references_resolve() -> None:
    container = _container()
    secret, config = _one("Secret"), _one("ConfigMap")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for env in container["env"]:
        source = env["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys
        else:
            ref = source["configMapKeyRef"]
            assert ref["name"] == config["metadata"]["name"] and ref["key"] in config["data"]
    env_names = {e["name"] for e in container["env"]}
    for arg in container["args"]:
        for name in re.findall(r"\$\(([A-Z_]+)\)", arg):
            assert name in env_names, f"args use $({name}), which is not set"
    volumes = {v["name"]: v for v in _pod()["spec"]["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["key"] for i in volumes["keys"]["secret"]["items"]} <= secret_keys
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]


def test_environment_names_are_petrel_settings() -> None:
    names = {e["name"] for e in _container()["env"] if e["name"].startswith("PETREL_")}
    assert names and names <= serve_env_names(), names - serve_env_names()


def test_configmap_config_starts_petrel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "petrel.toml"
    path.write_text(_one("ConfigMap")["data"]["petrel.toml"], encoding="utf-8")
    check_config_starts(str(path), str(tmp_path))
