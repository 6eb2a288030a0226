"""Tests of the integration-test control plane itself (tests/cluster).

Marked ``cluster``: they start real etcd/kube-apiserver/kcm/scheduler/kwok/
training-operator processes.  The unit tests at the bottom need nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster.controlplane import (
    EXIT_CODE_ANNOTATION,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KWOK_NODE_ANNOTATION,
    NODE_POOLS,
    POOL_LABEL,
    ClusterError,
    ControlPlane,
    bin_dir_for_build,
    exit_code_stage,
    node_manifests,
    pytorchjob,
)
from tests.cluster.kind import KindCluster, gpu_status_patch, kind_config

JOB_LABEL = "training.kubeflow.org/job-name"
ROLE_LABEL = "training.kubeflow.org/replica-type"


# What ControlPlane() starts: the control plane, kwok, both Kubeflows (training-operator v1, JobSet + Trainer v2).
CONTROL_PLANE_PROCESSES = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "training-operator",
                           "jobset", "trainer"}

def wait_for(what, fn, timeout=60.0, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error {last!r})")


@pytest.fixture(scope="module")
def api(cluster):
    import kubernetes  # pinned test dependency: kubernetes==37.0.2

    return kubernetes.config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture()
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pods_of(cluster, ns, job):
    return json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", f"{JOB_LABEL}={job}", "-o", "json").stdout)[
        "items"
    ]


def job_conditions(cluster, ns, job):
    obj = json.loads(cluster.kubectl("get", "pytorchjob", job, "-n", ns, "-o", "json").stdout)
    return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}


def create_job(cluster, ns, name, **kw):
    job = pytorchjob(name, namespace=ns, **kw)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    return job


def running_pods(cluster, ns, job, n):
    pods = pods_of(cluster, ns, job)
    ok = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    return ok if len(ok) == n else None


# --------------------------------------------------------------------------
# cluster tests


@pytest.mark.cluster
def test_api_is_served(cluster, api):
    from kubernetes import client

    version = client.VersionApi(api).get_code()
    assert version.major == "1" and version.minor.startswith("36"), version
    assert cluster.server.startswith("https://127.0.0.1:")
    assert os.path.exists(cluster.kubeconfig)
    # kubectl works with the same kubeconfig, and the CRD printer columns too.
    cluster.kubectl("get", "pytorchjobs", "-A")


@pytest.mark.cluster
def test_nodes_ready_with_gpu_capacity_and_labels(cluster):
    nodes = {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    for pool in NODE_POOLS:
        for i in range(pool.count):
            n = nodes[f"{pool.name}-{i}"]
            labels = n["metadata"]["labels"]
            assert labels[POOL_LABEL] == pool.name
            assert labels[GPU_PRODUCT_LABEL] == pool.product
            assert n["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
            assert n["status"]["capacity"][GPU_RESOURCE] == str(pool.gpus)
            assert n["status"]["allocatable"][GPU_RESOURCE] == str(pool.gpus)
            assert not n["spec"].get("taints"), n["spec"].get("taints")
            ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
            assert ready["Ready"] == "True"
    assert nodes["a800-0"]["metadata"]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-A800-SXM4-80GB"
    assert nodes["rtx4090-3"]["metadata"]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-GeForce-RTX-4090"


@pytest.mark.cluster
def test_pytorchjob_pods_are_scheduled_on_rtx4090_and_run(cluster, namespace):
    create_job(cluster, namespace, "smoke", master=1, workers=1, pool="rtx4090", gpus=2)
    pods = wait_for("2 running pods", lambda: running_pods(cluster, namespace, "smoke", 2), 180)
    roles = sorted(p["metadata"]["labels"][ROLE_LABEL] for p in pods)
    assert roles == ["master", "worker"]
    for p in pods:
        assert p["spec"]["nodeName"].startswith("rtx4090-"), p["spec"]["nodeName"]
        assert p["spec"]["restartPolicy"] == "Never"  # ExitCode -> pod restartPolicy Never
        c = next(c for c in p["spec"]["containers"] if c["name"] == "pytorch")
        assert c["resources"]["limits"][GPU_RESOURCE] == "2"
    # 2 GPUs each on 2-GPU nodes: the scheduler must have used two different nodes.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    wait_for("job Running", lambda: job_conditions(cluster, namespace, "smoke").get("Running") == "True", 120)


@pytest.mark.cluster
def test_webhook_refuses_two_masters(cluster, namespace):
    bad = pytorchjob("two-masters", namespace=namespace, master=2, workers=1)
    r = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0
    assert "denied the request" in r.stderr, r.stderr
    assert "validator.pytorchjob.training-operator.kubeflow.org" in r.stderr, r.stderr
    assert "replicas" in r.stderr.lower(), r.stderr
    r = cluster.kubectl("get", "pytorchjob", "two-masters", "-n", namespace, check=False)
    assert r.returncode != 0 and "NotFound" in r.stderr


@pytest.mark.cluster
def test_exit_code_137_fails_pod_and_operator_recreates_it(cluster, namespace, api):
    from kubernetes import client, watch

    create_job(cluster, namespace, "retry", master=1, workers=1, pool="rtx4090", gpus=1)
    pods = wait_for("2 running pods", lambda: running_pods(cluster, namespace, "retry", 2), 180)
    worker = next(p for p in pods if p["metadata"]["labels"][ROLE_LABEL] == "worker")
    name, old_uid = worker["metadata"]["name"], worker["metadata"]["uid"]

    core = client.CoreV1Api(api)
    # Watch from a resourceVersion taken before the annotation: no event can be missed.
    rv = core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}").metadata.resource_version
    cluster.kubectl("annotate", "pod", name, "-n", namespace, f"{EXIT_CODE_ANNOTATION}=137")
    seen_failed = False
    w = watch.Watch()
    for ev in w.stream(
        core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
        resource_version=rv, timeout_seconds=120,
    ):
        pod = ev["object"]
        if pod.metadata.uid != old_uid or pod.status.phase != "Failed":
            continue
        for cs in pod.status.container_statuses or []:
            t = cs.state.terminated if cs.state else None
            if cs.name == "pytorch" and t is not None and t.exit_code == 137:
                seen_failed = True
        if seen_failed:
            w.stop()
    assert seen_failed, "pod never reported Failed with exitCode 137"

    def recreated():
        for p in pods_of(cluster, namespace, "retry"):
            if (
                p["metadata"]["name"] == name
                and p["metadata"]["uid"] != old_uid
                and p["status"].get("phase") == "Running"
            ):
                return p
        return None

    new = wait_for("worker pod recreated and Running", recreated, 180)
    assert EXIT_CODE_ANNOTATION not in (new["metadata"].get("annotations") or {})
    conds = job_conditions(cluster, namespace, "retry")
    assert conds.get("Failed") != "True", conds


@pytest.mark.cluster
def test_exit_code_1_fails_job_and_0_succeeds(cluster, namespace):
    create_job(cluster, namespace, "perm", master=1, workers=0, pool="a800", gpus=8)
    create_job(cluster, namespace, "ok", master=1, workers=0, pool="a800", gpus=8)
    for job in ("perm", "ok"):
        wait_for(f"{job} running", lambda job=job: running_pods(cluster, namespace, job, 1), 180)
    perm_pod = pods_of(cluster, namespace, "perm")[0]["metadata"]["name"]
    ok_pod = pods_of(cluster, namespace, "ok")[0]["metadata"]["name"]
    cluster.kubectl("annotate", "pod", perm_pod, "-n", namespace, f"{EXIT_CODE_ANNOTATION}=1")
    cluster.kubectl("annotate", "pod", ok_pod, "-n", namespace, f"{EXIT_CODE_ANNOTATION}=0")
    wait_for("perm Failed", lambda: job_conditions(cluster, namespace, "perm").get("Failed") == "True", 120)
    wait_for("ok Succeeded", lambda: job_conditions(cluster, namespace, "ok").get("Succeeded") == "True", 120)
    ok = pods_of(cluster, namespace, "ok")[0]
    assert ok["status"]["phase"] == "Succeeded"
    term = ok["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    perm = pods_of(cluster, namespace, "perm")[0]
    assert perm["status"]["phase"] == "Failed"
    assert perm["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1


@pytest.mark.cluster
def test_a_deleted_pod_of_a_job_with_a_pod_failure_policy_ends_with_143_and_goes(cluster, namespace):
    """As a kubelet ends it (SIGTERM, exit 143, phase Failed): the Job controller then counts the failure and
    removes its tracking finalizer, so the pod and its namespace do not stay terminating."""
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pfp", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]},
            "template": {"spec": {
                "restartPolicy": "Never",
                "nodeSelector": {POOL_LABEL: "rtx4090"},
                "containers": [{"name": "main", "image": "busybox"}],
            }},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))

    def pods():
        return cluster.get_json("pods", "-n", namespace, "-l", "job-name=pfp")["items"]

    (pod,) = wait_for("the Job's pod running", lambda: [p for p in pods() if p["status"].get("phase") == "Running"], 120)
    assert "batch.kubernetes.io/job-tracking" in pod["metadata"]["finalizers"]
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for("the pod gone", lambda: not [p for p in pods() if p["metadata"]["uid"] == pod["metadata"]["uid"]], 120)
    status = cluster.get_json("job", "pfp", "-n", namespace)["status"]
    assert status.get("failed") == 1 and any(c["type"] == "Failed" for c in status.get("conditions", [])), status


@pytest.mark.cluster
def test_garbage_collector_cascades_owner_deletion(cluster, namespace):
    cluster.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=b")
    owner = json.loads(cluster.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "json").stdout)
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
        "data": {"x": "y"},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(owned))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")

    def gone():
        r = cluster.kubectl("get", "configmap", "owned", "-n", namespace, check=False)
        return r.returncode != 0 and "NotFound" in r.stderr

    wait_for("owned ConfigMap garbage-collected", gone, 120)


def _leftovers(state_dir: Path, pids) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", str(state_dir)], capture_output=True, text=True).stdout
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
    return [line for line in out.splitlines() if line.strip()] + [f"pid {p}" for p in alive]


def _state(pid):
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()[0]


@pytest.fixture(scope="module")
def local_bin_dir() -> str:
    """The harness's own binaries: these tests start and stop ControlPlanes of their own, whatever the session runs on."""
    return bin_dir_for_build()


@pytest.mark.cluster
@pytest.mark.slow
def test_stop_leaves_no_process(cluster, local_bin_dir, tmp_path):
    cp = ControlPlane(state_dir=tmp_path / "cp", bin_dir=local_bin_dir, keep_state=True).start()
    pids = list(cp.pids().values())
    assert set(cp.pids()) == CONTROL_PLANE_PROCESSES and all(cp.alive().values())
    cp.kubectl("get", "nodes")
    cp.stop()
    assert _leftovers(tmp_path / "cp", pids) == []
    # the session cluster is untouched
    cluster.kubectl("get", "--raw", "/readyz")


@pytest.mark.cluster
@pytest.mark.slow
def test_failed_startup_cleans_up(local_bin_dir, tmp_path):
    bins = tmp_path / "bin"
    bins.mkdir()
    for f in os.listdir(local_bin_dir):
        os.symlink(os.path.join(local_bin_dir, f), bins / f)
    (bins / "kube-controller-manager").unlink()
    # A component that leaves a child behind in its process group, then dies.
    pidfile = tmp_path / "orphan.pid"
    (bins / "kube-controller-manager").write_text(
        f"#!/bin/sh\nsh -c 'sleep 600; true' orphan-{tmp_path.name} &\necho $! > {pidfile}\necho boom >&2\nexit 3\n"
    )
    (bins / "kube-controller-manager").chmod(0o755)
    cp = ControlPlane(state_dir=tmp_path / "cp", bin_dir=str(bins), keep_state=True)
    with pytest.raises(ClusterError, match="kube-controller-manager exited"):
        cp.start()
    pids = [p.pid for p in cp.procs]
    assert [p.name for p in cp.procs][:3] == ["etcd", "kube-apiserver", "kube-controller-manager"]
    orphan = int(pidfile.read_text())
    assert _leftovers(tmp_path / "cp", pids + [orphan]) == []
    out = subprocess.run(["pgrep", "-a", "-f", f"orphan-{tmp_path.name}"], capture_output=True, text=True).stdout
    assert out.strip() == ""
    # Logs are kept for debugging a failed start.
    assert (tmp_path / "cp" / "logs" / "kube-apiserver.log").exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_children_die_with_a_killed_owner(local_bin_dir, tmp_path):
    """A pytest process killed by SIGKILL (CI timeout) leaves no control plane behind."""
    state = tmp_path / "cp"
    code = (
        "import sys, time\n"
        "from tests.cluster.controlplane import ControlPlane\n"
        f"cp = ControlPlane(state_dir={str(state)!r}, bin_dir={local_bin_dir!r}, die_with_parent=True).start()\n"
        "print('UP', flush=True)\n"
        "time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [os.environ.get("PYTHON", __import__("sys").executable), "-c", code],
        cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert owner.stdout.readline().strip() == "UP"
        pids = [p["pid"] for p in json.loads((state / "state.json").read_text())["procs"]]
        assert len(pids) == len(CONTROL_PLANE_PROCESSES)
    finally:
        owner.kill()
        owner.wait()
    wait_for("children to die", lambda: _leftovers(state, pids) == [], 30)


# --------------------------------------------------------------------------
# unit tests (no cluster)


def test_node_manifests():
    nodes = node_manifests()
    assert [n["metadata"]["name"] for n in nodes] == [
        "a800-0", "a800-1", "rtx4090-0", "rtx4090-1", "rtx4090-2", "rtx4090-3",
    ]
    a800 = nodes[0]
    assert a800["status"]["allocatable"][GPU_RESOURCE] == "8"
    assert a800["metadata"]["labels"][POOL_LABEL] == "a800"
    assert nodes[2]["status"]["capacity"][GPU_RESOURCE] == "2"


def test_exit_code_stage_selects_running_annotated_pods():
    st = exit_code_stage()
    exprs = st["spec"]["selector"]["matchExpressions"]
    assert {"key": ".status.phase", "operator": "In", "values": ["Running"]} in exprs
    assert any(EXIT_CODE_ANNOTATION in e["key"] and e["operator"] == "Exists" for e in exprs)
    assert "exitCode: {{ $code }}" in st["spec"]["next"]["statusTemplate"]


def test_kind_command_construction(tmp_path):
    k = KindCluster(name="hx", state_dir=tmp_path, kind="kind", kubectl="kubectl")
    kc = str(tmp_path / "kubeconfig")
    assert k.kubeconfig == kc
    assert k.create_command("/c.json") == [
        "kind", "create", "cluster", "--name", "hx", "--kubeconfig", kc, "--config", "/c.json", "--wait", "180s",
    ]
    assert k.delete_command() == ["kind", "delete", "cluster", "--name", "hx", "--kubeconfig", kc]
    assert k.nodes == {
        "a800-0": "hx-worker", "a800-1": "hx-worker2", "rtx4090-0": "hx-worker3",
        "rtx4090-1": "hx-worker4", "rtx4090-2": "hx-worker5", "rtx4090-3": "hx-worker6",
    }
    patches = k.node_patch_commands()
    assert patches[0][:6] == ["kubectl", "--kubeconfig", kc, "patch", "node", "hx-worker"]
    assert "--subresource=status" in patches[0]
    assert json.loads(patches[0][-1])[0] == {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "8"}
    assert json.loads(patches[5][-1])[1]["value"] == "2"
    install = k.operator_install_commands(Path("/m"))
    assert install[0][-4:] == ["apply", "--server-side", "-k", "/m/overlays/standalone"]
    cfg = kind_config()
    workers = [n for n in cfg["nodes"] if n["role"] == "worker"]
    assert len(workers) == 6
    assert workers[0]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-A800-SXM4-80GB"
    assert workers[5]["labels"][POOL_LABEL] == "rtx4090"
    assert gpu_status_patch(8).count("nvidia.com~1gpu") == 2
    assert not KindCluster.supports_exit_code_annotation
    # Same interface as ControlPlane.
    for attr in ("kubeconfig", "server", "bin_dir", "kubectl", "apply", "get_json", "env", "stop", "terminate_pod"):
        assert hasattr(k, attr), attr
    assert ControlPlane.supports_exit_code_annotation
