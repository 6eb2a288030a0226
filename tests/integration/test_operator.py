"""The operator against a real control plane: kube-apiserver, etcd, scheduler,
controller-manager, kwok GPU nodes, the Kubeflow training-operator v1.9 and Kubeflow
Trainer v2 on JobSet. Every test that takes `operator` runs for both backends."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cluster.controlplane import EXIT_CODE_ANNOTATION
from tests.integration.conftest import (
    EXAMPLES,
    apply,
    get,
    job_suspended,
    node_rank,
    pods_of,
    provide_volumes,
    run_object,
    run_status,
    wait_for,
)

pytestmark = pytest.mark.cluster

NODE_POOL_LABEL = "helixrun.io/pool"  # set on the kwok nodes by the harness, not used by our selectors


def launch(cluster, namespace: str, example: str, **spec_changes) -> dict:
    """Apply an example with its data and checkpoint volumes provided; return the applied object."""
    obj = run_object(EXAMPLES / example, **spec_changes)
    name = obj["metadata"]["name"]
    data_claim = obj["spec"].get("data", {}).get("pvc")
    claims = [f"{name}-checkpoints", "helixrun-model-cache"] + ([data_claim] if data_claim else [])
    provide_volumes(cluster, namespace, claims)
    if data_claim:
        cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": data_claim, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}, "storageClassName": ""},
        })
    apply(cluster, obj, namespace)
    return obj


def running_pods(cluster, run: str, namespace: str, count: int) -> list[dict]:
    def check():
        pods = [p for p in pods_of(cluster, run, namespace) if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=node_rank) if len(pods) == count else None

    return wait_for(f"{count} running pods of {run}", check, timeout=120)


def gang_replaced(cluster, run: str, namespace: str, before: dict[str, str]) -> bool:
    """As many pods as before run again, every one new (PyTorchJob keeps their names, JobSet does not)."""
    uids = {p["metadata"]["uid"] for p in running_pods(cluster, run, namespace, len(before))}
    return not uids & set(before.values())


def restarting_events(cluster, name: str, namespace: str) -> list[str]:
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={name}", "-o", "json").stdout
    return [e["message"] for e in json.loads(events)["items"] if e["reason"] == "Restarting"]


def node_pool(cluster, node: str) -> str:
    return cluster.get_json("node", node)["metadata"]["labels"][NODE_POOL_LABEL]


@pytest.mark.parametrize(
    ("example", "pool"),
    [("run-genechat.yaml", "a800"), ("run-metagene-4090.yaml", "rtx4090"), ("run-esm2.yaml", "a800"),
     ("run-structdiff.yaml", "rtx4090"), ("run-ptm-mamba.yaml", "a800")],
)
def test_examples_create_children_and_run_on_their_pool(cluster, operator, namespace, example, pool):
    obj = launch(cluster, namespace, example)
    name = obj["metadata"]["name"]
    job = wait_for(operator.backend.kind, lambda: get(cluster, operator.job_kind, name, namespace))
    for kind, child in (("configmap", f"{name}-config"), ("pvc", f"{name}-checkpoints"), ("service", f"{name}-metrics")):
        assert get(cluster, kind, child, namespace), f"{kind}/{child} missing"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingRun"
    pods = running_pods(cluster, name, namespace, obj["spec"]["hardware"].get("nodes", 1))
    assert {node_pool(cluster, p["spec"]["nodeName"]) for p in pods} == {pool}
    wait_for("phase Running", lambda: run_status(cluster, name, namespace).get("phase") == "Running")
    table = cluster.kubectl("get", "tr", "-n", namespace).stdout
    assert "Running" in table and obj["spec"]["recipe"] in table and pool in table


def test_a_run_asking_for_more_gpus_than_the_pool_has_stays_pending_and_says_why(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-esm2.yaml", hardware={"pool": "a800", "nodes": 3, "gpusPerNode": 8})
    name = obj["metadata"]["name"]
    placed = running_pods(cluster, name, namespace, 2)  # two ranks fit the pool's two nodes

    def unscheduled(status: dict) -> bool:
        return any(c["type"] == "Scheduled" and c["status"] == "False" for c in status.get("conditions") or [])

    wait_for("the scheduler's explanation", lambda: unscheduled(run_status(cluster, name, namespace)))
    # News from a placed rank, handled to the end, must not hide why the third still waits.
    seen = operator.handled("pod_changed")
    cluster.kubectl("annotate", "pod", placed[0]["metadata"]["name"], "-n", namespace, "example.com/touched=1")
    wait_for("the operator to handle the placed pod's event", lambda: operator.handled("pod_changed") > seen)
    status = run_status(cluster, name, namespace)
    assert unscheduled(status) and "nvidia.com/gpu" in status["message"]
    assert status["phase"] == "Pending"


def test_a_failed_worker_restarts_the_whole_gang(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-metagene-4090.yaml",
                 hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 2})
    name = obj["metadata"]["name"]
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in running_pods(cluster, name, namespace, 2)}
    wait_for("Running", lambda: run_status(cluster, name, namespace).get("phase") == "Running")
    worker = next(p["metadata"]["name"] for p in running_pods(cluster, name, namespace, 2) if node_rank(p) == 1)
    cluster.kubectl("annotate", "pod", worker, "-n", namespace, f"{EXIT_CODE_ANNOTATION}=137")

    wait_for("master and worker recreated", lambda: gang_replaced(cluster, name, namespace, before), timeout=180)
    status = wait_for("restart counted and Running again",
                      lambda: (s := run_status(cluster, name, namespace)).get("restarts", 0) >= 1
                      and s.get("phase") == "Running" and s)
    assert status["restarts"] == 1
    restarting = restarting_events(cluster, name, namespace)
    assert any("exited with code 137 (retryable)" in m and "restarting the gang" in m for m in restarting), restarting


def test_a_permanent_exit_code_fails_the_run_with_the_reason(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    name = obj["metadata"]["name"]
    (pod,) = running_pods(cluster, name, namespace, 1)
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, f"{EXIT_CODE_ANNOTATION}=2")
    # The job's Failed condition and the pod's exit arrive as separate events: wait for both to be explained.
    status = wait_for("Failed with the pod's reason", lambda: (s := run_status(cluster, name, namespace))
                      .get("phase") == "Failed" and "exited with code" in s.get("message", "") and s)
    assert "exited with code 2 (permanent)" in status["message"]


def test_retryable_exits_beyond_the_backoff_limit_fail_the_run(cluster, operator, namespace):
    # The training-operator's own limit never triggers for ExitCode replicas (kubeflow/trainer#2045).
    obj = launch(cluster, namespace, "run-structdiff.yaml", backoffLimit=1)
    name = obj["metadata"]["name"]
    (first,) = running_pods(cluster, name, namespace, 1)
    cluster.kubectl("annotate", "pod", first["metadata"]["name"], "-n", namespace, f"{EXIT_CODE_ANNOTATION}=137")
    wait_for("the first retry", lambda: run_status(cluster, name, namespace).get("restarts") == 1)
    (second,) = wait_for("the recreated pod", lambda: [p for p in running_pods(cluster, name, namespace, 1)
                                                       if p["metadata"]["uid"] != first["metadata"]["uid"]])
    cluster.kubectl("annotate", "pod", second["metadata"]["name"], "-n", namespace, f"{EXIT_CODE_ANNOTATION}=137")
    status = wait_for("Failed past the limit", lambda: (s := run_status(cluster, name, namespace))
                      .get("phase") == "Failed" and s)
    assert status["restarts"] == 2
    assert "restart 2 exceeds spec.backoffLimit 1" in status["message"]
    wait_for("the job deleted", lambda: get(cluster, operator.job_kind, name, namespace) is None)
    assert run_status(cluster, name, namespace)["phase"] == "Failed"


@pytest.mark.parametrize(("retention", "pvc_kept"), [("Retain", True), ("Delete", False)])
def test_deleting_a_run_removes_its_children_and_honours_retention(cluster, operator, namespace, retention, pvc_kept):
    obj = launch(cluster, namespace, "run-esm2.yaml",
                 checkpointing={"everySteps": 100, "keepLast": 2, "retention": retention})
    name = obj["metadata"]["name"]
    wait_for("job", lambda: get(cluster, operator.job_kind, name, namespace))
    cluster.kubectl("delete", "trainingrun", name, "-n", namespace, "--wait=true", timeout=120)
    for kind, child in ((operator.job_kind, name), ("configmap", f"{name}-config"), ("service", f"{name}-metrics")):
        wait_for(f"{kind}/{child} collected", lambda: get(cluster, kind, child, namespace) is None, timeout=120)
    if pvc_kept:
        assert get(cluster, "pvc", f"{name}-checkpoints", namespace) is not None
    else:
        wait_for("pvc collected", lambda: get(cluster, "pvc", f"{name}-checkpoints", namespace) is None, timeout=120)
    assert get(cluster, "pvc", "helixrun-model-cache", namespace) is not None


def test_suspend_reaches_the_job(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-esm2.yaml")
    name = obj["metadata"]["name"]
    wait_for("job", lambda: get(cluster, operator.job_kind, name, namespace))
    cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("job suspended", lambda: job_suspended(get(cluster, operator.job_kind, name, namespace), operator.backend))
    wait_for("phase Suspended", lambda: run_status(cluster, name, namespace).get("phase") == "Suspended")


def test_changing_a_fixed_field_is_refused_with_a_condition(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-esm2.yaml")
    name = obj["metadata"]["name"]
    wait_for("job", lambda: get(cluster, operator.job_kind, name, namespace))
    cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"training":{"optimizer":{"lr":0.001}}}}')

    def refused():
        conditions = run_status(cluster, name, namespace).get("conditions", [])
        return next((c for c in conditions if c["type"] == "SpecChangeRefused" and c["status"] == "True"), None)

    condition = wait_for("SpecChangeRefused", refused)
    assert "training.optimizer.lr" in condition["message"]
    # A later, allowed change does not forget the refused one: the spec still differs from what runs.
    cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("the job suspended", lambda: job_suspended(get(cluster, operator.job_kind, name, namespace), operator.backend))
    condition = refused()
    assert condition and "training.optimizer.lr" in condition["message"]


def test_a_plan_that_does_not_fit_creates_no_job(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-metagene-4090.yaml",
                 model={"name": "metagene-ai/METAGENE-1", "method": "full"})
    name = obj["metadata"]["name"]
    status = wait_for("refusal", lambda: (s := run_status(cluster, name, namespace)).get("phase") == "Failed" and s)
    plan_fits = next(c for c in status["conditions"] if c["type"] == "PlanFits")
    assert plan_fits["status"] == "False" and plan_fits["reason"] == "PlanRefused"
    assert "rtx4090" in plan_fits["message"]
    assert get(cluster, operator.job_kind, name, namespace) is None


def evict(cluster, pod: str, namespace: str) -> None:
    """The Eviction API, as `kubectl drain` and the cluster autoscaler use it."""
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
                    input=json.dumps(eviction))


@pytest.mark.parametrize(("role", "how", "why"), [
    ("master", "delete", "was deleted"),
    ("worker", "delete", "was deleted"),
    ("worker", "evict", "was deleted: EvictionByEvictionAPI"),
])
def test_a_deleted_pod_restarts_the_whole_gang_and_counts_once(cluster, operator, namespace, role, how, why):
    obj = launch(cluster, namespace, "run-metagene-4090.yaml",
                 hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 2})
    name = obj["metadata"]["name"]
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in running_pods(cluster, name, namespace, 2)}
    wait_for("Running", lambda: run_status(cluster, name, namespace).get("phase") == "Running")
    ranks = {node_rank(pod): pod["metadata"]["name"] for pod in running_pods(cluster, name, namespace, 2)}
    gone = ranks[{"master": 0, "worker": 1}[role]]
    if how == "evict":
        evict(cluster, gone, namespace)
    else:
        cluster.kubectl("delete", "pod", gone, "-n", namespace, "--wait=false")
    # The training-operator alone recreates only the deleted pod; the surviving rank would wait in rendezvous.
    # JobSet recreates the whole gang itself; either way the restart counts once.
    wait_for("master and worker recreated", lambda: gang_replaced(cluster, name, namespace, before), timeout=180)
    status = wait_for("the deletion counted and Running again",
                      lambda: (s := run_status(cluster, name, namespace)).get("restarts", 0) >= 1
                      and s.get("phase") == "Running" and s)
    assert status["restarts"] == 1, "one deletion, one gang restart: the peer the operator deleted counts no more"
    exited = next(c for c in status["conditions"] if c["type"] == "TrainerExited")
    assert exited["reason"] == "PodDeleted" and f"pod {gone} {why}" in exited["message"], exited
    assert any(f"pod {gone} {why}" in m and "restarting the gang" in m
               for m in restarting_events(cluster, name, namespace))


@pytest.mark.parametrize("stop", ["suspend", "delete the run"])
def test_pods_removed_by_suspending_or_deleting_a_run_count_no_restart(cluster, operator, namespace, stop):
    obj = launch(cluster, namespace, "run-metagene-4090.yaml",
                 hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 2})
    name = obj["metadata"]["name"]
    pods = running_pods(cluster, name, namespace, 2)
    wait_for("Running", lambda: run_status(cluster, name, namespace).get("phase") == "Running")
    seen = operator.handled("pod_changed")
    if stop == "suspend":
        cluster.kubectl("patch", "trainingrun", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        wait_for("phase Suspended", lambda: run_status(cluster, name, namespace).get("phase") == "Suspended")
    else:  # foreground: the run stays, being deleted, until its job and pods are gone
        cluster.kubectl("delete", "trainingrun", name, "-n", namespace, "--cascade=foreground", "--wait=true",
                        timeout=120)
    wait_for("the pods gone", lambda: not pods_of(cluster, name, namespace), timeout=120)
    # Each pod's last event (its deletion) has been handled at least once.
    wait_for("the operator to handle the deletions", lambda: operator.handled("pod_changed") >= seen + len(pods))
    assert not restarting_events(cluster, name, namespace)
    assert not run_status(cluster, name, namespace).get("restarts")


def test_deletions_beyond_the_backoff_limit_fail_the_run(cluster, operator, namespace):
    obj = launch(cluster, namespace, "run-structdiff.yaml", backoffLimit=1)
    name = obj["metadata"]["name"]
    (first,) = running_pods(cluster, name, namespace, 1)
    cluster.kubectl("delete", "pod", first["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for("the first retry", lambda: run_status(cluster, name, namespace).get("restarts") == 1)
    (second,) = wait_for("the recreated pod", lambda: [p for p in running_pods(cluster, name, namespace, 1)
                                                       if p["metadata"]["uid"] != first["metadata"]["uid"]])
    cluster.kubectl("delete", "pod", second["metadata"]["name"], "-n", namespace, "--wait=false")
    status = wait_for("Failed past the limit", lambda: (s := run_status(cluster, name, namespace))
                      .get("phase") == "Failed" and s)
    assert status["restarts"] == 2
    assert f"pod {second['metadata']['name']} was deleted" in status["message"]
    assert "restart 2 exceeds spec.backoffLimit 1" in status["message"]
    wait_for("the job deleted", lambda: get(cluster, operator.job_kind, name, namespace) is None)
    assert run_status(cluster, name, namespace)["phase"] == "Failed"


@pytest.fixture
def bare_namespace(cluster):
    """A namespace no chart has seen: no trainer ServiceAccount, Role or RoleBinding."""
    name = f"bare-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s", timeout=200)


def test_a_run_where_no_chart_went_gets_the_trainers_account_and_its_pods(cluster, operator, bare_namespace):
    namespace, account = bare_namespace, "helixrun-trainer"
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    name = obj["metadata"]["name"]
    (pod,) = running_pods(cluster, name, namespace, 1)
    assert pod["spec"]["serviceAccountName"] == account
    trainer = f"system:serviceaccount:{namespace}:{account}"

    def can_i(verb: str, resource: str, subresource: str = "") -> bool:
        args = ["auth", "can-i", verb, resource, "--as", trainer, "-n", namespace]
        return cluster.kubectl(*args + (["--subresource", subresource] if subresource else []),
                               check=False).stdout.strip() == "yes"

    assert can_i("patch", "trainingruns.helixrun.io", "status"), "rank 0 reports progress into the run's status"
    assert not can_i("patch", "trainingruns.helixrun.io") and not can_i("list", "trainingruns.helixrun.io")
    assert not can_i("get", "pods") and not can_i("get", "secrets")
    # Shared by every run of the namespace: deleting the run keeps them.
    cluster.kubectl("delete", "trainingrun", name, "-n", namespace, "--wait=true", timeout=120)
    for kind in ("serviceaccount", "role", "rolebinding"):
        assert get(cluster, kind, account, namespace), f"{kind}/{account} went with the run"


def test_a_trainer_account_the_admin_made_is_left_as_it_is(cluster, operator, namespace):
    # The `namespace` fixture made the ServiceAccount, as the chart or a cluster admin would.
    cluster.kubectl("annotate", "serviceaccount", "helixrun-trainer", "-n", namespace, "example.com/owner=admin")
    obj = launch(cluster, namespace, "run-structdiff.yaml")
    running_pods(cluster, obj["metadata"]["name"], namespace, 1)
    account = get(cluster, "serviceaccount", "helixrun-trainer", namespace)
    assert account["metadata"]["annotations"] == {"example.com/owner": "admin"}
    assert "app.kubernetes.io/managed-by" not in (account["metadata"].get("labels") or {})
