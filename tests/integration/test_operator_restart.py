"""An operator killed and restarted in the middle of a burst converges: one job per run."""

from __future__ import annotations

import pytest
import yaml

from helixrun.backends import BACKENDS
from tests.integration.conftest import EXAMPLES, Operator, run_object, wait_for

pytestmark = pytest.mark.cluster
BURST = 50


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_killing_the_operator_during_a_burst_leaves_exactly_one_job_per_run(crd_installed, namespace, tmp_path, backend):
    cluster = crd_installed
    kind = f"{BACKENDS[backend].plural}.{BACKENDS[backend].group}"
    runs = []
    for i in range(BURST):
        obj = run_object(EXAMPLES / "run-esm2.yaml", suspend=True)  # suspended: no pods, only the control flow
        obj["metadata"]["name"] = f"burst-{i:02d}"
        runs.append(obj)
    stream = "\n---\n".join(yaml.safe_dump(o) for o in runs)

    first = Operator(cluster, tmp_path / "operator-1.log", backend).start()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stream, timeout=120)
    wait_for("some jobs", lambda: len(jobs(cluster, namespace, kind)) >= 5, timeout=120)
    first.kill()  # SIGKILL: no cleanup, handlers cut mid-flight
    assert len(jobs(cluster, namespace, kind)) < BURST, "the burst finished before the kill; nothing was tested"

    second = Operator(cluster, tmp_path / "operator-2.log", backend).start()
    try:
        wait_for("a job for every run", lambda: len(jobs(cluster, namespace, kind)) >= BURST, timeout=300)
        wait_for("every run reconciled", lambda: all(
            (r.get("status") or {}).get("jobName") for r in cluster.get_json("trainingruns", "-n", namespace)["items"]
        ), timeout=300)
        names = [j["metadata"]["name"] for j in jobs(cluster, namespace, kind)]
        assert sorted(names) == sorted(o["metadata"]["name"] for o in runs)
        for job in jobs(cluster, namespace, kind):
            owners = job["metadata"]["ownerReferences"]
            assert len(owners) == 1 and owners[0]["name"] == job["metadata"]["name"]
    finally:
        # Delete the runs while their operator runs: it releases the TrainingRuntimes' finalizers as their jobs go.
        cluster.kubectl("delete", "trainingruns", "--all", "-n", namespace, "--wait=true", timeout=300)
        wait_for("every job and runtime gone", lambda: not jobs(cluster, namespace, kind)
                 and not jobs(cluster, namespace, "trainingruntimes.trainer.kubeflow.org"), timeout=300)
        second.stop()


def jobs(cluster, namespace: str, kind: str) -> list[dict]:
    return cluster.get_json(kind, "-n", namespace)["items"]
