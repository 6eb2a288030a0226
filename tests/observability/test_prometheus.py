"""A real Prometheus scrapes live local trainers and the operator's metrics server;
every dashboard query and alert expression goes through its HTTP API, and the
stall and NaN alerts fire.

Needs Debian's prometheus 2.42, which `make debian-packages` unpacks (tests/debian); no cluster.
"""

from __future__ import annotations

import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helixrun.metrics_contract import OPERATOR_METRICS, TRAINER_METRICS
from helixrun.telemetry import alerts, dashboards, dcgm
from helixrun.telemetry.promql import exposition_names, metric_names

from .harness import (
    Prometheus,
    dashboard_problems,
    http_get,
    load_dashboard,
    not_on_cpu,
    poll,
    start_operator_metrics,
    start_trainer,
)

pytestmark = pytest.mark.slow

RUN, NAN_RUN, HUNG_RUN, NAMESPACE, POOL = "obs-run", "obs-nan", "obs-hung", "default", "a800"
HANG_AT_STEP = 30

# Alert windows of seconds: the same rules as the chart's, other parameter values.
TEST_RULES = {
    "stalledWindow": "10s", "stalledFor": "2s",
    "lossWindow": "30s", "lossNaNFor": "1s",
    "divergeShortWindow": "10s", "divergeLongWindow": "30s", "divergeFor": "2s",
    "checkpointIntervalSeconds": 5, "checkpointMissedIntervals": 2, "checkpointFor": "2s",
    "restartsWindow": "1m", "restartsThreshold": 1, "restartsFor": "1s",
    "gpuMemoryFor": "2s",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    processes = []
    try:
        ports = {"op": 0, "run": 0, "nan": 0, "hung": 0}
        from .harness import free_port

        ports = {k: free_port() for k in ports}
        operator = start_operator_metrics(
            tmp, ports["op"],
            runs=[(NAMESPACE, RUN, "Running", POOL, 1), (NAMESPACE, NAN_RUN, "Running", POOL, 1),
                  (NAMESPACE, "old-run", "Failed", "rtx4090", 2)],
            restarts=[(NAMESPACE, RUN)], refused=["rtx3080"])
        processes.append(operator)
        trainer = start_trainer(tmp, RUN, ports["run"],
                                ["checkpointing.everySteps=40", "evaluation.everySteps=40"])
        processes.append(trainer)
        nan_trainer = start_trainer(tmp, NAN_RUN, ports["nan"],
                                    ["training.optimizer.lr=1e30", "checkpointing.everySteps=100000",
                                     "evaluation.everySteps=100000"], drop_keep_best=True)
        processes.append(nan_trainer)
        # The runtime's documented fault hook: the loop blocks after a step, the exporter thread keeps answering.
        hung_trainer = start_trainer(tmp, HUNG_RUN, ports["hung"], ["checkpointing.everySteps=100000",
                                                                    "evaluation.everySteps=100000"],
                                     env={"HELIXRUN_TEST_PAUSE": f"{HANG_AT_STEP}:after-step"})
        processes.append(hung_trainer)
        trainer_target = lambda port, run: {"targets": [f"127.0.0.1:{port}"], "labels": {"run": run, "namespace": NAMESPACE}}
        prom = Prometheus(tmp / "prometheus", [
            # As the chart's PodMonitor: trainer labels win, `run` is a target label.
            {"job_name": "helixrun-trainers", "honor_labels": True,
             "static_configs": [trainer_target(ports["run"], RUN), trainer_target(ports["nan"], NAN_RUN),
                                trainer_target(ports["hung"], HUNG_RUN)]},
            # As the chart's ServiceMonitor.
            {"job_name": "helixrun-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{ports['op']}"]}]},
        ], rules=alerts.rules_file(TEST_RULES))
        processes.append(prom)
        prom.wait_ready()

        def diagnostics() -> str:
            return "".join(p.tail() for p in processes)

        poll("every target up", lambda: all(p.alive() for p in processes[:4]) and
             prom.targets_up({"helixrun-trainers", "helixrun-operator"}) and
             len([t for t in prom.api("targets")["data"]["activeTargets"] if t["health"] == "up"]) == 4,
             timeout=90, on_timeout=diagnostics)
        # Data for every panel: an evaluation, a checkpoint, and enough samples for rate windows.
        for what, expr in [
            ("an evaluation", f'helixrun_eval_metric{{run="{RUN}"}}'),
            ("a checkpoint", f'helixrun_checkpoint_last_step{{run="{RUN}"}} > 0'),
            ("6 scrapes", f'count_over_time(helixrun_train_step{{run="{RUN}"}}[1m]) >= 6'),
            ("operator samples", 'count_over_time(helixrun_operator_runs{phase="Running"}[1m]) >= 3'),
        ]:
            poll(what, lambda: prom.query(expr)["data"]["result"], timeout=90, on_timeout=diagnostics)
        yield {"prom": prom, "trainer": trainer, "nan_trainer": nan_trainer, "hung_trainer": hung_trainer,
               "operator": operator,
               "ports": ports, "diagnostics": diagnostics}
    finally:
        for process in reversed(processes):
            process.stop(graceful=isinstance(process, Prometheus))  # trainers: no checkpoint on the way out


@pytest.mark.parametrize("filename", sorted(dashboards.DASHBOARDS))
def test_every_dashboard_query_parses_and_returns_data(stack, filename):
    problems, checked = dashboard_problems(stack["prom"], filename, {"namespace": NAMESPACE, "run": RUN})
    assert checked >= 10, f"{filename}: only {checked} queries found"
    assert not problems, f"{filename}:\n" + "\n".join(problems) + stack["diagnostics"]()


def _exposed(port: int) -> set[str]:
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_dashboards_and_alerts_name_only_metrics_the_processes_export(stack):
    trainer_exposed = _exposed(stack["ports"]["run"])
    operator_exposed = _exposed(stack["ports"]["op"])
    absent_on_cpu = not_on_cpu()
    trainer_names = set().union(*(exposition_names(m) for m in TRAINER_METRICS))
    operator_names = set().union(*(exposition_names(m) for m in OPERATOR_METRICS))
    exprs = [(f"{f}: {t}", e) for f in dashboards.DASHBOARDS for t, e in dashboards.panel_queries(load_dashboard(f))]
    exprs += [(r["alert"], r["expr"]) for r in alerts.rules_file()["groups"][0]["rules"]]
    problems = []
    for where, expr in exprs:
        for name in metric_names(expr) - set(dcgm.DCGM_METRICS) - {"up"}:
            if name not in trainer_names | operator_names:
                problems.append(f"{where}: {name} is not in the metrics contract")
            elif name in trainer_names and name not in trainer_exposed and name not in absent_on_cpu:
                problems.append(f"{where}: {name} is not exported by the live trainer")
            elif name in operator_names and name not in operator_exposed:
                problems.append(f"{where}: {name} is not exported by the operator's metrics server")
    assert not problems, "\n".join(problems)
    # And the other way round: every documented CPU series is exported (the contract is not aspirational).
    missing = {n for n in trainer_names - absent_on_cpu if n not in trainer_exposed}
    assert not missing, f"the trainer does not export {sorted(missing)}"
    assert operator_names <= operator_exposed, f"the operator does not export {sorted(operator_names - operator_exposed)}"


def test_alert_rules_load_and_every_expression_parses(stack):
    prom = stack["prom"]
    rules = alerts.rules_file(TEST_RULES)["groups"][0]["rules"]
    for rule in rules:
        answer = prom.query(rule["expr"])
        assert answer.get("status") == "success", f"{rule['alert']}: {answer.get('error')}\n{rule['expr']}"

    def loaded():
        groups = prom.api("rules")["data"]["groups"]
        return {r["name"]: r for g in groups for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")}

    found = poll("rules evaluated", lambda: len(loaded()) == len(rules) and loaded(), timeout=30)
    unhealthy = {name: r.get("lastError") for name, r in found.items() if r["health"] != "ok"}
    assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
    assert set(found) == {a.name for a in alerts.ALERTS}
    # The healthy run is not reported as stalled or NaN.
    assert not stack["prom"].firing("HelixrunTrainingStalled", run=RUN)
    assert not stack["prom"].firing("HelixrunLossNaN", run=RUN)


def test_nan_loss_fires_HelixrunLossNaN(stack):
    prom = stack["prom"]
    poll("the NaN run to export a NaN loss",
         lambda: prom.query(f'helixrun_train_loss{{run="{NAN_RUN}"}} != helixrun_train_loss{{run="{NAN_RUN}"}}')["data"]["result"],
         timeout=60, on_timeout=stack["diagnostics"])
    firing = poll("HelixrunLossNaN firing for the NaN run", lambda: prom.firing("HelixrunLossNaN", run=NAN_RUN),
                  timeout=60, on_timeout=stack["diagnostics"])
    assert firing[0]["labels"]["severity"] == "critical"
    assert firing[0]["labels"]["namespace"] == NAMESPACE
    assert NAN_RUN in firing[0]["annotations"]["summary"]
    assert not prom.firing("HelixrunLossNaN", run=RUN), "the healthy run is reported NaN"


def test_hung_training_loop_fires_HelixrunTrainingStalled_while_its_exporter_answers(stack):
    prom = stack["prom"]
    poll(f"the hung run to stop at step {HANG_AT_STEP}",
         lambda: prom.query(f'helixrun_train_step{{run="{HUNG_RUN}"}} == {HANG_AT_STEP}')["data"]["result"],
         timeout=60, on_timeout=stack["diagnostics"])
    firing = poll("HelixrunTrainingStalled firing for the hung run",
                  lambda: prom.firing("HelixrunTrainingStalled", run=HUNG_RUN), timeout=60,
                  on_timeout=stack["diagnostics"])
    assert firing[0]["labels"]["namespace"] == NAMESPACE
    # The stall was seen in the step series, not as a dead target.
    up = prom.query(f'up{{run="{HUNG_RUN}"}}')["data"]["result"]
    assert up and up[0]["value"][1] == "1", f"the hung trainer's exporter should still answer: {up}"
    assert stack["hung_trainer"].alive()


def test_repeated_restarts_fire_HelixrunRestartsLooping(stack):
    prom, operator = stack["prom"], stack["operator"]
    assert not prom.firing("HelixrunRestartsLooping", run=RUN)
    before = prom.query(f'helixrun_operator_restarts_observed_total{{run="{RUN}"}}')["data"]["result"]
    assert before, "the operator exports no restart counter for the run"
    # threshold 1 in TEST_RULES: one more observed restart inside the window is a loop
    os.kill(operator.pid, signal.SIGUSR1)
    firing = poll("HelixrunRestartsLooping firing", lambda: prom.firing("HelixrunRestartsLooping", run=RUN),
                  timeout=60, on_timeout=stack["diagnostics"])
    assert firing[0]["labels"]["namespace"] == NAMESPACE


def test_plot_reads_a_cluster_run_from_prometheus(stack, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    out = tmp_path / "prom-curves.png"
    proc = subprocess.run([sys.executable, "-m", "helixrun.cli", "plot", RUN, "-n", NAMESPACE, "--prometheus",
                           stack["prom"].url, "--since", "120", "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as image:
        assert image.size == (1200, 800)
    from helixrun.cli.runs import prometheus, views

    curves = views.curves_from_series(**prometheus.curve_series(stack["prom"].url, RUN, NAMESPACE, 120))
    assert len(curves.steps) >= 5 and "loss" in curves.eval and "perplexity" in curves.eval
    assert curves.steps == sorted(curves.steps), "steps go backwards"


def test_status_takes_eta_and_throughput_from_prometheus(stack):
    from helixrun.cli.runs import prometheus, views

    status = views.RunView(name=RUN, namespace=NAMESPACE, phase="Running", step=3, loss=9.0)
    view = views.with_live_values(status, prometheus.live_values(stack["prom"].url, RUN, NAMESPACE))
    assert view.eta_seconds is not None and view.eta_seconds > 0
    assert view.tokens_per_second is not None and view.tokens_per_second > 0
    assert view.step == 3 and view.loss == 9.0, "the TrainingRun status keeps step and loss"
    bare = views.with_live_values(views.RunView(name=RUN, namespace=NAMESPACE),
                                  prometheus.live_values(stack["prom"].url, RUN, NAMESPACE))
    assert bare.step and bare.step > 3 and bare.loss is not None


def test_stopped_trainer_fires_HelixrunTrainingStalled(stack):
    prom, trainer = stack["prom"], stack["trainer"]
    assert not prom.firing("HelixrunTrainingStalled", run=RUN)
    os.kill(trainer.pid, signal.SIGSTOP)  # frozen: no steps, no scrapes answered
    try:
        firing = poll("HelixrunTrainingStalled firing for the stopped run",
                      lambda: prom.firing("HelixrunTrainingStalled", run=RUN), timeout=60,
                      on_timeout=stack["diagnostics"])
        assert firing[0]["labels"]["namespace"] == NAMESPACE
        assert "no step progress" in firing[0]["annotations"]["summary"]
    finally:
        os.kill(trainer.pid, signal.SIGCONT)
