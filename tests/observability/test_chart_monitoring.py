"""templates/monitoring/ rendered by the pinned helm (tests/chart/helm.py)."""

from __future__ import annotations

import json

import pytest

from helixrun.telemetry import alerts, dashboards

CHART = dashboards.CHART_DIR
ALL_ON = {"monitoring": {k: {"enabled": True} for k in ("podMonitor", "serviceMonitor", "prometheusRule", "dashboards")}}


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="module")
def render():
    try:
        from tests.chart import helm

        helm.helm_binary()
    except Exception as exc:  # noqa: BLE001 - as tests/chart: no helm is an error, never a skip
        pytest.fail(f"monitoring chart tests need helm: {exc}", pytrace=False)
    return helm.template


def _kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_monitoring_is_off_by_default(render):
    objects = render()
    assert not [o for o in objects if o["kind"] in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]
    assert not [o for o in _kind(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"].get("labels", {})]


def test_podmonitor_selects_every_run_and_carries_training_operator_labels(render):
    values = _deep_merge(ALL_ON, {"monitoring": {"podMonitor": {
        "additionalLabels": {"release": "kps"}, "maxLocalRanks": 3, "interval": "15s"}}})
    (pm,) = _kind(render(values), "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kps"
    spec = pm["spec"]
    assert spec["selector"] == {"matchExpressions": [{"key": "helixrun.io/run", "operator": "Exists"}]}
    assert spec["namespaceSelector"] == {"any": True}
    assert set(spec["podTargetLabels"]) >= {"training.kubeflow.org/job-name", "training.kubeflow.org/replica-type",
                                             "training.kubeflow.org/replica-index"}
    endpoints = spec["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics", "metrics-1", "metrics-2"]
    for endpoint in endpoints:
        assert endpoint["honorLabels"] is True and endpoint["interval"] == "15s" and endpoint["path"] == "/metrics"
        assert {"sourceLabels": ["__meta_kubernetes_pod_label_helixrun_io_run"], "targetLabel": "run"} in \
            endpoint["relabelings"]


def test_podmonitor_follows_the_watched_namespaces(render):
    values = _deep_merge(ALL_ON, {"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    (pm,) = _kind(render(values), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_servicemonitor_selects_the_operator_metrics_service(render):
    values = _deep_merge(ALL_ON, {"monitoring": {"serviceMonitor": {"additionalLabels": {"release": "kps"}}}})
    objects = render(values)
    (sm,) = _kind(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in _kind(objects, "Service")
                if selector.items() <= s["metadata"]["labels"].items()
                and any(p.get("name") == "metrics" for p in s["spec"]["ports"])]
    assert len(services) == 1, "the ServiceMonitor must select exactly the operator's metrics Service"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["helixrun-system"]}


def test_prometheusrule_renders_the_alerts_with_the_chart_values(render):
    params = {"stalledFor": "7m", "restartsThreshold": 5, "gpuMemoryRatio": 0.9}
    values = _deep_merge(ALL_ON, {"monitoring": {"prometheusRule": {"rules": params,
                                                                    "additionalLabels": {"release": "kps"}}}})
    (rule,) = _kind(render(values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    (group,) = rule["spec"]["groups"]
    assert group["rules"] == alerts.rules_file(params)["groups"][0]["rules"]
    stalled = next(r for r in group["rules"] if r["alert"] == "HelixrunTrainingStalled")
    assert stalled["for"] == "7m"
    assert "{{ $labels.run }}" in stalled["annotations"]["summary"], "Prometheus templates must survive Helm"


def test_dashboards_are_configmaps_for_the_grafana_sidecar(render):
    values = _deep_merge(ALL_ON, {"monitoring": {"dashboards": {"namespace": "monitoring",
                                                                "annotations": {"grafana_folder": "helixrun"}}}})
    maps = [o for o in _kind(render(values), "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert {o["metadata"]["labels"]["grafana_dashboard"] for o in maps} == {"1"}
    data = {key: text for o in maps for key, text in o["data"].items()}
    assert set(data) == set(dashboards.DASHBOARDS)
    for filename, text in data.items():
        assert json.loads(text) == json.loads((CHART / dashboards.DASHBOARD_DIR / filename).read_text())
    for o in maps:
        assert o["metadata"]["namespace"] == "monitoring"
        assert o["metadata"]["annotations"] == {"grafana_folder": "helixrun"}
