"""A cluster with only Kubeflow Trainer v2 (no training-operator v1, no PyTorchJob CRD): the operator
started with `backend: auto` (the chart's and `helixrun operator`'s default) runs every run as a TrainJob."""

from __future__ import annotations

import pytest

from tests.cluster.controlplane import ControlPlane, bin_dir_for_build
from tests.integration.conftest import CRD, Operator, get, node_rank, run_status, wait_for
from tests.integration.test_operator import gang_replaced, launch, node_pool, running_pods
from tests.integration.test_status_conventions import end_every_pod, kstatus_is, wait_condition

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def trainer_only(tmp_path_factory):
    cluster = ControlPlane(bin_dir=bin_dir_for_build(), die_with_parent=True, training_operator=False).start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/trainingruns.helixrun.io", "--timeout=60s")
        operator = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log", "auto").start()
        yield cluster, operator
        operator.stop()
    finally:
        cluster.stop()


def test_auto_picks_trainjob_and_the_run_places_restarts_and_completes(trainer_only):
    cluster, _ = trainer_only
    namespace = "v2-only"
    cluster.kubectl("create", "namespace", namespace)
    assert cluster.kubectl("get", "crd", "pytorchjobs.kubeflow.org", check=False).returncode != 0
    obj = launch(cluster, namespace, "run-metagene-4090.yaml", hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 2})
    name = obj["metadata"]["name"]
    job = wait_for("TrainJob", lambda: get(cluster, "trainjobs.trainer.kubeflow.org", name, namespace))
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingRun"
    pods = running_pods(cluster, name, namespace, 2)
    assert {node_pool(cluster, p["spec"]["nodeName"]) for p in pods} == {"rtx4090"}
    wait_condition(cluster, name, namespace, "Ready")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    worker = next(p["metadata"]["name"] for p in pods if node_rank(p) == 1)
    cluster.terminate_pod(namespace, worker, 137)
    wait_for("the gang recreated", lambda: gang_replaced(cluster, name, namespace, before), timeout=180)
    wait_for("one restart counted", lambda: run_status(cluster, name, namespace).get("restarts") == 1)
    end_every_pod(cluster, name, namespace, 2, 0)
    assert "condition met" in wait_condition(cluster, name, namespace, "Complete").stdout
    wait_for("kstatus Current", kstatus_is(cluster, name, namespace, "Current"))
    assert run_status(cluster, name, namespace)["restarts"] == 1
