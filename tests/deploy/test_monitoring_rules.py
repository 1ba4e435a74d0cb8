"""deploy/monitoring: the alert rules and the dashboard only use metrics a live gateway
exports (scraped from its /metrics here, after some traffic), every PromQL expression
parses (PyPI `promql-parser`, a binding of the Rust parser GreptimeDB uses), and
docs/operations.md documents exactly the metrics that exist."""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterator

import promql_parser
import pytest
import yaml
from deploy_support import (
    DOCS_OPERATIONS,
    clean_env,
    deploy_path,
    free_port,
    read_text,
    run_serve,
    stop_serve,
)
from prometheus_client.parser import text_string_to_metric_families

ALERTS = deploy_path("monitoring", "alerts.yaml")
DASHBOARD = deploy_path("monitoring", "dashboard.json")
# Metrics the rules use that petrel does not export, each with who does.
EXTERNAL_METRICS = {
    "up": "Prometheus, for every scrape target",
    "node_filesystem_avail_bytes": "node_exporter",
    "node_filesystem_size_bytes": "node_exporter",
    "kubelet_volume_stats_available_bytes": "kubelet",
    "kubelet_volume_stats_capacity_bytes": "kubelet",
}
SEVERITIES = {"critical", "warning", "info"}
# Sample-name suffixes per metric type, as the Prometheus text format exposes them.
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "untyped": ("",),
             "info": ("_info",), "stateset": ("",), "gaugehistogram": ("_bucket",)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """{family name: type} from a live gateway's /metrics, after a signed-request-free
    bit of traffic (an unsigned GET is refused 403, and counted)."""
    tmp = tmp_path_factory.mktemp("metrics")
    outcome = run_serve(["--data", str(tmp / "data"), "--host", "127.0.0.1",
                         "--port", str(free_port()), "--access-key", "PKMETRICS",
                         "--secret-key", "metrics-secret"], env=clean_env())
    assert outcome.process is not None, outcome.output
    try:
        # Refused 403 (unsigned): what matters is that the request is counted.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(outcome.endpoint + "/some-bucket/some-key", timeout=10)
        with urllib.request.urlopen(outcome.endpoint + "/metrics", timeout=10) as response:
            text = response.read().decode("utf-8")
    finally:
        assert stop_serve(outcome.process) == 0
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    # The 0.0.4 text format shows a counter's or histogram's `_created` series as a gauge
    # family of its own: it belongs to its parent.
    return {name: kind for name, kind in families.items()
            if not (name.endswith("_created") and name.removesuffix("_created") in families)}


def _sample_names(exported: dict[str, str]) -> set[str]:
    return {name + suffix for name, kind in exported.items()
            for suffix in _SUFFIXES.get(kind, ("",))}


def _selectors(expr: str) -> list[str]:
    """Metric names of every vector selector in a PromQL expression (raises ValueError
    when it does not parse)."""
    names: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.append(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_selector_extraction_sees_inside_functions() -> None:
    assert _selectors('histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) / b') == \
        ["a_bucket", "b"]
    with pytest.raises(ValueError):
        _selectors("rat(a[5m])")


# ----- alert rules ---------------------------------------------------------------------
def _rules() -> Iterator[dict]:  # type: ignore[type-arg]
    for group in yaml.safe_load(read_text(ALERTS))["groups"]:
        yield from group["rules"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, re.M):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_alert_rules_structure() -> None:
    document = yaml.safe_load(read_text(ALERTS))
    assert set(document) == {"groups"}
    group_names = [g["name"] for g in document["groups"]]
    assert len(group_names) == len(set(group_names))
    alert_names = [r["alert"] for r in _rules()]
    assert len(alert_names) == len(set(alert_names))
    anchors = _anchors(read_text(DOCS_OPERATIONS))
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, \
            f"{rule['alert']}: runbook {annotations['runbook_url']} has no heading"


def test_the_issue_s_alerts_are_there() -> None:
    """Error rate, latency, disk space, backend upload backlog, corruption."""
    expressions = " ".join(r["expr"] for r in _rules())
    for needed in ('status=~"5.."', "histogram_quantile(0.99", "node_filesystem_avail_bytes",
                   "petrel_segments_sealed", "petrel_corruptions_detected"):
        assert needed in expressions, needed


@pytest.mark.parametrize("rule", list(_rules()), ids=lambda r: r["alert"])
def test_alert_expr_parses_and_uses_real_metrics(rule, exported) -> None:  # type: ignore[no-untyped-def]
    names = _selectors(rule["expr"])
    assert names, "an alert must select some metric"
    known = _sample_names(exported) | set(EXTERNAL_METRICS)
    unknown = sorted(set(names) - known)
    assert not unknown, f"{rule['alert']} uses metrics nobody exports: {unknown}"


# ----- dashboard -----------------------------------------------------------------------
def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus would see."""
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$job", "petrel").replace("$instance", ".*"))


def _dashboard_targets() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(read_text(DASHBOARD))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_shape() -> None:
    dashboard = json.loads(read_text(DASHBOARD))
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables


def test_dashboard_uses_real_metrics(exported) -> None:  # type: ignore[no-untyped-def]
    known = _sample_names(exported) | {"up"}
    dashboard = json.loads(read_text(DASHBOARD))
    queries = [(title, expr) for title, expr in _dashboard_targets()]
    queries += [(f"variable {v['name']}", v["definition"])
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert queries
    for title, expr in queries:
        match = re.fullmatch(r"label_values\((.+), *\w+\)", expr)
        promql = _grafana_to_promql(match.group(1) if match else expr)
        unknown = sorted(set(_selectors(promql)) - known)
        assert not unknown, f"panel {title!r} uses metrics nobody exports: {unknown}"


# ----- docs ----------------------------------------------------------------------------
def _documented_metrics() -> set[str]:
    """Metric names in the first column of docs/operations.md's metrics table."""
    section = read_text(DOCS_OPERATIONS).split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(petrel_[a-z_]+)`", section, re.M))


def test_operations_guide_documents_every_metric(exported) -> None:  # type: ignore[no-untyped-def]
    # As a PromQL user writes them: counters with _total, histograms by their base name.
    ours = {name + ("_total" if kind == "counter" else "") for name, kind in exported.items()
            if name.startswith("petrel_")}
    documented = _documented_metrics()
    assert ours - documented == set(), "exported but not in docs/operations.md"
    assert documented - ours == set(), "in docs/operations.md but not exported"
