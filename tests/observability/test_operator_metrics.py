"""The operator's collectors and its HTTP server in the event loop that runs it (kopf's)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helixrun.metrics_contract import OPERATOR_METRICS
from helixrun.telemetry import operator_metrics as om
from helixrun.telemetry.promql import exposition_names

from tests.cluster.controlplane import terminate

from .harness import free_port, poll


def samples(metrics: om.OperatorMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_runs_by_phase_and_gpus_follow_run_events():
    m = om.OperatorMetrics()
    m.run_seen("a", "r1", "Running", "h100", 8)
    m.run_seen("a", "r2", "Pending", "h100", 4)
    m.run_seen("b", "r3", "Failed", "a800", 2)
    s = samples(m)
    assert s[("helixrun_operator_runs", (("phase", "Running"), ("pool", "h100")))] == 1
    assert s[("helixrun_operator_runs", (("phase", "Succeeded"), ("pool", "h100")))] == 0
    assert s[("helixrun_operator_gpus_requested", (("pool", "h100"),))] == 12
    assert s[("helixrun_operator_gpus_requested", (("pool", "a800"),))] == 0, "a failed run holds no GPUs"
    m.run_seen("a", "r1", "Succeeded", "h100", 8)
    m.run_gone("a", "r2")
    s = samples(m)
    assert s[("helixrun_operator_runs", (("phase", "Running"), ("pool", "h100")))] == 0
    assert s[("helixrun_operator_runs", (("phase", "Succeeded"), ("pool", "h100")))] == 1
    assert s[("helixrun_operator_gpus_requested", (("pool", "h100"),))] == 0


def test_restart_counter_exists_from_the_run_first_seen_until_it_is_gone():
    m = om.OperatorMetrics()
    key = ("helixrun_operator_restarts_observed_total", (("namespace", "a"), ("run", "r")))
    m.run_seen("a", "r", "Running", "h100", 8)
    assert samples(m)[key] == 0, "born at 0, so increase() counts the first restart"
    m.restart_observed("a", "r")
    m.run_seen("a", "r", "Restarting", "h100", 8)
    assert samples(m)[key] == 1
    m.run_gone("a", "r")
    assert key not in samples(m)


def test_reconcile_timing_and_errors():
    m = om.OperatorMetrics()
    with m.observe_reconcile("create"):
        pass
    with pytest.raises(ValueError):
        with m.observe_reconcile("create"):
            raise ValueError("boom")

    class Waiting(Exception):
        pass

    with pytest.raises(Waiting):
        with m.observe_reconcile("create", ignore=(Waiting,)):
            raise Waiting()
    s = samples(m)
    assert s[("helixrun_operator_reconcile_duration_seconds_count", (("handler", "create"),))] == 3
    assert s[("helixrun_operator_reconcile_errors_total", (("handler", "create"),))] == 1


def test_decorated_handlers_are_timed():
    m = om.OperatorMetrics()

    @m.instrumented("update")
    async def handler(**kwargs):
        return kwargs["name"]

    @m.instrumented("update")
    def sync_handler(**kwargs):
        raise RuntimeError(kwargs["name"])

    assert asyncio.run(handler(name="x", spec={})) == "x"
    assert not asyncio.iscoroutinefunction(sync_handler), "kopf must still run a sync handler in its executor"
    with pytest.raises(RuntimeError):
        sync_handler(name="y")
    s = samples(m)
    assert s[("helixrun_operator_reconcile_duration_seconds_count", (("handler", "update"),))] == 2
    assert s[("helixrun_operator_reconcile_errors_total", (("handler", "update"),))] == 1


def test_every_operator_metric_of_the_contract_is_exported():
    m = om.OperatorMetrics()
    m.run_seen("a", "r", "Running", "h100", 1)
    m.restart_observed("a", "r")
    m.plan_refused("h100")
    with m.observe_reconcile("create"):
        pass
    with pytest.raises(RuntimeError):
        with m.observe_reconcile("create"):
            raise RuntimeError
    exported = {name for name, _ in samples(m)}
    for metric in OPERATOR_METRICS:
        assert exposition_names(metric) <= exported, f"{metric.name} not exported"


def test_server_runs_in_the_callers_event_loop():
    async def scenario():
        server = await om.start_operator_metrics(0, "127.0.0.1", metrics=om.OperatorMetrics())
        url = f"http://127.0.0.1:{server.port}/metrics"
        fetch = lambda timeout: urllib.request.urlopen(url, timeout=timeout).read()  # noqa: E731
        body = await asyncio.to_thread(fetch, 5)
        assert b"helixrun_operator_runs" in body or body.startswith(b"# HELP")
        # While the loop is blocked, nothing answers: the endpoint lives in this loop, not in a thread.
        blocked = asyncio.get_running_loop().run_in_executor(None, fetch, 0.5)
        time.sleep(1.0)  # block the loop on purpose
        with pytest.raises(Exception):
            await blocked
        await server.stop()

    asyncio.run(scenario())


KOPF_MODULE = """
import kopf
from helixrun.telemetry import operator_metrics

@kopf.on.startup()
async def start_metrics(memo, **_):
    memo.metrics = await operator_metrics.start_operator_metrics(host="127.0.0.1")
    operator_metrics.run_seen("ns", "from-kopf", "Running", "h100", 8)

@kopf.on.cleanup()
async def stop_metrics(memo, **_):
    await memo.metrics.stop()
"""


@pytest.mark.cluster
def test_served_by_a_kopf_startup_handler(cluster, tmp_path):
    module = tmp_path / "metrics_operator.py"
    module.write_text(textwrap.dedent(KOPF_MODULE))
    port = free_port()
    env = cluster.env() | {om.PORT_ENV: str(port)}
    log = (tmp_path / "kopf.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(module)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = poll("kopf's metrics endpoint", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=2).read(), timeout=60,
            on_timeout=lambda: (tmp_path / "kopf.log").read_text()[-3000:])
        assert b'helixrun_operator_gpus_requested{pool="h100"} 8.0' in body
    finally:
        terminate(proc)
        log.close()
