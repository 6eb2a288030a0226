"""Our images in real pods on the real node: a smoke ESM-2 run trains on two ranks, resumes exactly
after its worker's training process is SIGKILLed, saves the step in flight when its master pod is
deleted, is scraped by a real Prometheus with the chart's scrape configuration, and the operator
doing all of it runs in a pod installed by the chart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chart.helm import template
from tests.cluster.controlplane import wait_until
from tests.observability.harness import Prometheus, dashboard_problems
from tests.realnode.conftest import (
    RELEASE_NAMESPACE,
    LogFollower,
    apply_run,
    describe,
    run_status,
    smoke_run,
    trainer_pods,
    wait_for,
    wait_for_phase,
)
from tests.realnode.podmonitor import scrape_configs

pytestmark = pytest.mark.cluster

SHA = re.compile(r"weights sha256=([0-9a-f]{64})")
RESUMED = re.compile(r"resumed from \S+ \(step (\d+)\)")
# Long enough to kill mid-run, short enough for CI: a checkpoint every 10 steps.
STEPS = {"maxSteps": 60}


def final_sha(cluster, name: str, namespace: str) -> str:
    logs = cluster.kubectl("logs", "-n", namespace, trainer_pods(cluster, name, namespace)["master-0"]["metadata"]["name"]).stdout
    found = SHA.findall(logs)
    assert found, f"no weights sha256 in the master's log:\n{logs[-3000:]}"
    return found[-1]


def checkpoint_dirs(cluster, name: str, namespace: str) -> list[str]:
    """The committed checkpoints on the run's volume, read on the node's disk."""
    claim = cluster.get_json("pvc", f"{name}-checkpoints", "-n", namespace)
    volume = cluster.get_json("pv", claim["spec"]["volumeName"])
    root = Path(volume["spec"]["hostPath"]["path"])
    return sorted(p.parent.name for p in root.rglob("COMPLETE"))


@pytest.fixture(scope="module")
def reference(real_cluster, release):
    """One uninterrupted smoke run, started once: its final weights are what every interrupted run must end with."""
    namespace = "rn-reference"
    real_cluster.kubectl("create", "namespace", namespace)
    obj = smoke_run("esm2-smoke", **STEPS)
    apply_run(real_cluster, obj, namespace)
    yield real_cluster, obj["metadata"]["name"], namespace
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=300s", timeout=320, check=False)


def reference_sha(reference) -> str:
    cluster, name, namespace = reference
    wait_for_phase(cluster, name, namespace, "Succeeded")
    return final_sha(cluster, name, namespace)


def test_a_smoke_run_trains_in_real_pods_with_checkpoints_and_progress(reference):
    cluster, name, namespace = reference
    pods = wait_for("both ranks running", lambda: (p := trainer_pods(cluster, name, namespace)) and len(p) == 2
                    and all(x["status"].get("phase") == "Running" for x in p.values()) and p, timeout=600)
    for pod in pods.values():
        assert pod["spec"]["nodeName"] == "local-0"
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "pytorch"]
        assert container["image"].endswith("helixrun/trainer:dev")
    # Step and loss reach `kubectl get tr` from the trainer itself (rank 0 patches the status).
    progress = wait_for("progress in the run's status",
                        lambda: (s := run_status(cluster, name, namespace).get("progress")) and s.get("step", 0) > 0 and s,
                        timeout=600)
    assert progress.get("loss") is not None
    table = cluster.kubectl("get", "tr", name, "-n", namespace).stdout
    assert re.search(rf"{name}\s+\S+\s+esm2-mlm\s+local\s+2\s+\d+", table), table
    status = wait_for_phase(cluster, name, namespace, "Succeeded")
    assert status["progress"]["step"] == STEPS["maxSteps"], status
    committed = checkpoint_dirs(cluster, name, namespace)
    assert committed, f"no committed checkpoint on the run's volume\n{describe(cluster, name, namespace)}"
    assert final_sha(cluster, name, namespace)


def test_sigkill_of_the_workers_training_process_restarts_the_gang_and_resumes_exactly(real_cluster, namespace,
                                                                                        reference):
    cluster = real_cluster
    name = "esm2-sigkill"
    apply_run(cluster, smoke_run(name, **STEPS), namespace)
    wait_for("a committed checkpoint",
             lambda: (run_status(cluster, name, namespace).get("lastCheckpoint") or {}).get("step"), timeout=600)
    before = trainer_pods(cluster, name, namespace)
    killed = cluster.kubectl("exec", "-n", namespace, before["worker-0"]["metadata"]["name"], "-c", "pytorch", "--",
                             "pkill", "-KILL", "-f", "helixrun-train", check=False)
    assert killed.returncode == 0, killed.stderr
    wait_for("the restart counted", lambda: run_status(cluster, name, namespace).get("restarts", 0) >= 1, timeout=300)
    wait_for_phase(cluster, name, namespace, "Succeeded")
    after = trainer_pods(cluster, name, namespace)
    assert {p["metadata"]["uid"] for p in after.values()}.isdisjoint(
        {p["metadata"]["uid"] for p in before.values()}), "the whole gang is new"
    master_log = cluster.kubectl("logs", "-n", namespace, after["master-0"]["metadata"]["name"]).stdout
    resumed = RESUMED.findall(master_log)
    assert resumed and int(resumed[0]) > 0, master_log[-3000:]
    assert final_sha(cluster, name, namespace) == reference_sha(reference)


def test_deleting_the_master_pod_saves_the_step_in_flight(real_cluster, namespace, reference, tmp_path):
    cluster = real_cluster
    name = "esm2-delete"
    apply_run(cluster, smoke_run(name, **STEPS), namespace)

    def between_checkpoints():
        status = run_status(cluster, name, namespace)
        step = (status.get("progress") or {}).get("step", 0)
        last = (status.get("lastCheckpoint") or {}).get("step", 0)
        return step if last and step > last else None

    reported = wait_for("a step past the last checkpoint", between_checkpoints, timeout=600)
    master = trainer_pods(cluster, name, namespace)["master-0"]["metadata"]["name"]
    follower = LogFollower(cluster, namespace, master, tmp_path / "master.log")
    cluster.kubectl("delete", "pod", master, "-n", namespace, "--wait=false")
    said = follower.wait_closed()
    assert "received SIGTERM" in said, said[-3000:]
    saved = [int(s) for s in re.findall(r"checkpoint step-(\d+) committed", said)]
    assert saved and saved[-1] >= reported, f"the SIGTERM save ({saved}) lost steps reported before it ({reported})"
    wait_for_phase(cluster, name, namespace, "Succeeded")
    new_master = trainer_pods(cluster, name, namespace)["master-0"]
    assert new_master["metadata"]["name"] == master and new_master["metadata"]["uid"]
    resumed = RESUMED.findall(cluster.kubectl("logs", "-n", namespace, master).stdout)
    assert resumed and int(resumed[0]) == saved[-1], f"resumed from {resumed}, saved {saved}"
    assert final_sha(cluster, name, namespace) == reference_sha(reference)


def test_the_operator_runs_in_a_pod_installed_by_the_chart(real_cluster, release):
    pods = real_cluster.get_json("pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    assert pods[0]["spec"]["nodeName"] == "local-0", "a real container, not a kwok fake"
    logs = real_cluster.kubectl("logs", "-n", RELEASE_NAMESPACE, pods[0]["metadata"]["name"]).stdout
    assert "esm2-smoke" in logs or "reconcil" in logs.lower(), logs[-2000:]


def test_prometheus_scrapes_the_trainer_pods_with_the_charts_scrape_configuration(real_cluster, namespace,
                                                                                 tmp_path):
    """The chart's PodMonitor as the Prometheus Operator would configure it, Prometheus in the node's network
    namespace (where pod IPs route), and the run dashboard's queries answered from the live pods."""
    cluster = real_cluster
    name = "esm2-metrics"
    values = {"monitoring": {"podMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "900ms"}}}
    (pod_monitor,) = [o for o in template(values, namespace=RELEASE_NAMESPACE) if o["kind"] == "PodMonitor"]
    net = cluster.node_state.network
    prom = Prometheus(tmp_path / "prometheus", scrape_configs(pod_monitor, cluster.kubeconfig),
                      host=net.node_ip, prefix=tuple(net.in_netns()))
    try:
        prom.wait_ready()
        apply_run(cluster, smoke_run(name, maxSteps=200), namespace)

        def both_ranks_up():
            result = prom.query(f'up{{run="{name}", namespace="{namespace}"}} == 1')["data"]["result"]
            return len({r["metric"]["pod"] for r in result}) == 2

        wait_for("both trainer pods scraped", both_ranks_up, timeout=600)
        problems: list[str] = []

        def still_running():
            if run_status(cluster, name, namespace).get("phase") in ("Succeeded", "Failed"):
                raise AssertionError("the run ended before every panel had data:\n" + "\n".join(problems))

        def dashboard_answers():
            found, checked = dashboard_problems(prom, "helixrun-run.json", {"namespace": namespace, "run": name})
            problems[:] = found
            return checked and not found

        wait_until("every run-dashboard panel answered", dashboard_answers, timeout=600, alive=still_running)
    finally:
        prom.stop()
