"""A run's status as the tools platform teams run read it: kstatus (Flux, kpt, `kubectl`'s waiters),
`kubectl wait --for=condition=...`, and metav1.Condition fields. For both backends."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.controlplane import EXIT_CODE_ANNOTATION
from tests.integration.conftest import get, run_status, wait_for
from tests.integration.test_operator import launch, running_pods

pytestmark = pytest.mark.cluster
CONDITION_FIELDS = {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}


def kstatus(cluster, name: str, namespace: str) -> dict:
    """kstatus of the run as the cluster holds it (sigs.k8s.io/cli-utils, built into the test tools)."""
    obj = cluster.kubectl("get", "trainingrun", name, "-n", namespace, "-o", "json").stdout
    result = subprocess.run([cluster.binary("kstatus")], input=obj, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def kstatus_is(cluster, name: str, namespace: str, want: str):
    return lambda: (k := kstatus(cluster, name, namespace))["status"] == want and k


def wait_condition(cluster, name: str, namespace: str, condition: str) -> subprocess.CompletedProcess:
    return cluster.kubectl("wait", f"--for=condition={condition}", f"trainingrun/{name}", "-n", namespace,
                           "--timeout=120s", timeout=150)


def end_every_pod(cluster, name: str, namespace: str, nodes: int, code: int) -> None:
    for pod in running_pods(cluster, name, namespace, nodes):
        cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, f"{EXIT_CODE_ANNOTATION}={code}")


def test_a_finished_run_is_complete_and_current(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    name = obj["metadata"]["name"]
    running_pods(cluster, name, namespace, 1)
    wait_for("Running", lambda: run_status(cluster, name, namespace).get("phase") == "Running")
    wait_for("kstatus Current while training", kstatus_is(cluster, name, namespace, "Current"))
    wait_condition(cluster, name, namespace, "Ready")
    end_every_pod(cluster, name, namespace, 1, 0)
    assert "condition met" in wait_condition(cluster, name, namespace, "Complete").stdout
    status = run_status(cluster, name, namespace)
    assert status["phase"] == "Succeeded"
    assert wait_for("kstatus Current once finished", kstatus_is(cluster, name, namespace, "Current"))
    generation = get(cluster, "trainingrun", name, namespace)["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    for condition in status["conditions"]:
        assert set(condition) == CONDITION_FIELDS, condition
        assert condition["observedGeneration"] == generation, condition
    held = {c["type"]: c["status"] for c in status["conditions"]}
    assert held["Complete"] == held["Ready"] == "True" and "Failed" not in held


def test_a_failed_run_is_failed_for_kstatus_and_kubectl_wait(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    name = obj["metadata"]["name"]
    end_every_pod(cluster, name, namespace, 1, 2)
    assert "condition met" in wait_condition(cluster, name, namespace, "Failed").stdout
    result = wait_for("kstatus Failed", kstatus_is(cluster, name, namespace, "Failed"))
    assert "exited with code 2 (permanent)" in result["message"]
    failed = next(c for c in run_status(cluster, name, namespace)["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentExit"


def test_an_edit_is_in_progress_until_the_operator_applies_it(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    name = obj["metadata"]["name"]
    running_pods(cluster, name, namespace, 1)
    wait_for("kstatus Current", kstatus_is(cluster, name, namespace, "Current"))
    operator.stop()
    try:
        cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        result = kstatus(cluster, name, namespace)
        assert result["status"] == "InProgress" and "observed generation" in result["message"], result
    finally:
        operator.start()
    wait_for("the edit observed", lambda: run_status(cluster, name, namespace).get("observedGeneration")
             == get(cluster, "trainingrun", name, namespace)["metadata"]["generation"], timeout=120)
    assert "condition met" in wait_condition(cluster, name, namespace, "Suspended").stdout
    wait_for("kstatus Current once suspended", kstatus_is(cluster, name, namespace, "Current"))
    # A run waiting for its pods is in progress, not current.
    cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Current again with the gang back", kstatus_is(cluster, name, namespace, "Current"), timeout=120)
    assert run_status(cluster, name, namespace)["phase"] == "Running"
