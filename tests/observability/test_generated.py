"""Generated files stay in sync with their generators, and name only contract metrics."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from helixrun.metrics_contract import OPERATOR_METRICS, TRAINER_METRICS
from helixrun.telemetry import alerts, dashboards, dcgm, metrics_doc
from helixrun.telemetry.promql import exposition_names, metric_names

from tests.debian import require

CHART = dashboards.CHART_DIR
CONTRACT_NAMES = set().union(*(exposition_names(m) for m in TRAINER_METRICS + OPERATOR_METRICS))
REGENERATE = "run `python -m helixrun.telemetry.{}` and commit the result"


@pytest.mark.parametrize("filename", sorted(dashboards.DASHBOARDS))
def test_committed_dashboard_json_is_the_generated_one(filename):
    committed = (CHART / dashboards.DASHBOARD_DIR / filename).read_text()
    assert committed == dashboards.render(dashboards.DASHBOARDS[filename]), \
        f"{filename} differs from the generator: " + REGENERATE.format("dashboards")


def test_committed_rules_file_is_the_generated_one():
    assert (CHART / alerts.RULES_FILE).read_text() == alerts.helm_rules_file(), REGENERATE.format("alerts")


def test_committed_metrics_doc_is_the_generated_one():
    assert metrics_doc.DOC.read_text() == metrics_doc.render(), REGENERATE.format("metrics_doc")


def test_metrics_doc_lists_every_contract_series():
    text = metrics_doc.DOC.read_text()
    missing = [name for name in sorted(CONTRACT_NAMES) if f"`{name}`" not in text]
    assert not missing, f"docs/METRICS.md lacks {missing}"


def test_chart_values_carry_every_alert_parameter_with_its_default():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["monitoring"]["prometheusRule"]["rules"] == alerts.DEFAULTS


def _all_exprs() -> list[tuple[str, str]]:
    exprs = []
    for filename, build in dashboards.DASHBOARDS.items():
        exprs += [(f"{filename}: {title}", expr) for title, expr in dashboards.panel_queries(build())]
    exprs += [(rule["alert"], rule["expr"]) for rule in alerts.rules_file()["groups"][0]["rules"]]
    return exprs


def unknown_metrics(exprs: list[tuple[str, str]]) -> list[str]:
    allowed = CONTRACT_NAMES | set(dcgm.DCGM_METRICS) | {"up"}
    return [f"{where}: {name}" for where, expr in exprs for name in sorted(metric_names(expr) - allowed)]


def test_dashboards_and_alerts_name_only_contract_or_dcgm_metrics():
    assert not unknown_metrics(_all_exprs())


def test_the_name_check_catches_a_metric_outside_the_contract():
    # The check above would fail for a typo or for a metric the trainer never exported.
    assert unknown_metrics([("panel", 'rate(helixrun_train_tokenz_total{run=~"$run"}[$__rate_interval])')]) == \
        ["panel: helixrun_train_tokenz_total"]
    assert unknown_metrics([("panel", "helixrun_train_tokens")]) == ["panel: helixrun_train_tokens"], \
        "a counter must be named with its _total suffix"


def test_every_run_dashboard_panel_uses_the_run_picker():
    board = dashboards.build_run()
    names = [v["name"] for v in board["templating"]["list"]]
    assert {"datasource", "namespace", "run"} <= set(names)
    for title, expr in dashboards.panel_queries(board):
        assert '$run' in expr, f"run dashboard panel {title!r} ignores the run picker: {expr}"


def test_the_dashboards_cover_what_the_issue_asks_for():
    run_titles = {p["title"] for p in dashboards.build_run()["panels"]}
    for wanted in ("Training loss", "Evaluation metrics", "Learning rate", "Throughput", "Step time",
                   "GPU memory (torch)", "GPU utilisation (DCGM)", "GPU framebuffer used (DCGM)",
                   "Checkpoint age", "Checkpoint save time", "Restarts", "ETA"):
        assert wanted in run_titles
    fleet_titles = {p["title"] for p in dashboards.build_fleet()["panels"]}
    for wanted in ("Runs by phase", "Runs by pool and phase", "GPUs in use per pool", "Failed runs by pool"):
        assert wanted in fleet_titles


def test_promtool_accepts_the_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(alerts.rules_file()))
    proc = subprocess.run([require("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in proc.stdout


def test_helm_tpl_of_the_rules_file_is_the_plain_rules_file():
    custom = {**alerts.DEFAULTS, "stalledFor": "7m", "restartsThreshold": 5}
    rendered = yaml.safe_load(alerts.helm_tpl(alerts.helm_rules_file(), custom))
    assert rendered == alerts.rules_file(custom)["groups"][0]["rules"]


def test_rules_refuse_unknown_parameters():
    with pytest.raises(KeyError, match="stalledForr"):
        alerts.rules_file({"stalledForr": "1m"})


def test_trainer_port_names_are_the_ones_the_podmonitor_scrapes():
    from helixrun.telemetry import scrape

    ports = scrape.container_ports(9400, 8)
    assert [p["name"] for p in ports] == ["metrics"] + [f"metrics-{i}" for i in range(1, 8)]
    assert [p["containerPort"] for p in ports] == list(range(9400, 9408))
    assert all(len(p["name"]) <= 15 for p in ports)
    pod_monitor = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["podMonitor"]
    assert pod_monitor["port"] == scrape.PORT_NAME
    assert pod_monitor["maxLocalRanks"] >= 8, "the largest pool has 8 GPUs per node"
    assert scrape.scrape_annotations(9400)["prometheus.io/port"] == "9400"
