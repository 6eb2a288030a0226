"""Real images in real pods: the control plane with its real node (tests/cluster/realnode.py),
the images built from dockerfiles/ and loaded into the node's containerd, and the chart installed
with them, so the operator itself runs in a pod."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import install_chart
from tests.cluster.controlplane import ClusterError, ControlPlane, bin_dir_for_build, running_control_plane, wait_until
from tests.images.build import build_images, chart_values, load_into_containerd

ROOT = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NAMESPACE = "helixrun", "helixrun-system"
_namespaces = itertools.count()


def start_real_cluster() -> tuple[ControlPlane, bool]:
    """The control plane with a real node: started here, or `make cluster REAL_NODE=1`'s with
    HELIXRUN_TEST_CLUSTER=existing. Fails (never skips) when it cannot run."""
    if os.environ.get("HELIXRUN_TEST_CLUSTER", "local") == "existing":
        cp = running_control_plane(os.environ.get("HELIXRUN_CLUSTER_STATE", ".cluster"))
        if cp is None or cp.node_state is None:
            raise ClusterError("HELIXRUN_TEST_CLUSTER=existing needs `make cluster REAL_NODE=1` running")
        return cp, False
    bin_dir = bin_dir_for_build(build=os.environ.get("HELIXRUN_CLUSTER_NO_BUILD") != "1")
    return ControlPlane(bin_dir=bin_dir, die_with_parent=True, real_node=True).start(), True


@pytest.fixture(scope="session")
def real_cluster():
    try:
        cp, owned = start_real_cluster()
    except ClusterError as e:
        pytest.fail(f"the control plane with a real node could not be started: {e}", pytrace=False)
    yield cp
    if owned:
        cp.stop()


@pytest.fixture(scope="session")
def images(real_cluster) -> dict[str, str]:
    refs = build_images()
    load_into_containerd(real_cluster.node_state.containerd_address, list(refs.values()))
    return refs


@pytest.fixture(scope="session")
def release(real_cluster, images):
    """The chart installed with the built images: the operator runs in a pod on the real node."""
    values = chart_values(images)
    # Only the real node runs containers: a kwok node would "run" the operator without running it.
    values["operator"]["nodeSelector"] = {"helixrun.io/pool": "local"}
    install_chart(real_cluster.kubeconfig, RELEASE, RELEASE_NAMESPACE, values, wait=True, timeout="5m")
    return RELEASE


@pytest.fixture
def namespace(real_cluster, release):
    name = f"rn-{next(_namespaces)}-{uuid.uuid4().hex[:5]}"
    real_cluster.kubectl("create", "namespace", name)
    yield name
    # Free the node's CPU-backed "GPUs" for the next test.
    real_cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=300s", timeout=320, check=False)


def smoke_run(name: str, nodes: int = 2, **training) -> dict:
    """The ESM-2 example as a smoke test of the `local` pool: tiny model, generated data, 2 ranks."""
    obj = yaml.safe_load((ROOT / "examples" / "run-esm2.yaml").read_text())
    obj["metadata"] = {"name": name}
    spec = obj["spec"]
    spec["smokeTest"] = True
    spec["hardware"] = {"pool": "local", "nodes": nodes, "gpusPerNode": 1}
    spec["training"].update(training)
    return obj


def apply_run(cluster, obj: dict, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def run_status(cluster, name: str, namespace: str) -> dict:
    result = cluster.kubectl("get", "trainingrun", name, "-n", namespace, "-o", "json", check=False)
    return (json.loads(result.stdout).get("status") or {}) if result.returncode == 0 else {}


def trainer_pods(cluster, name: str, namespace: str) -> dict[str, dict]:
    """Live pods of a run's job by replica (`master-0`, `worker-0`)."""
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"training.kubeflow.org/job-name={name}")["items"]
    return {
        f"{p['metadata']['labels']['training.kubeflow.org/replica-type']}-"
        f"{p['metadata']['labels']['training.kubeflow.org/replica-index']}": p
        for p in pods if not p["metadata"].get("deletionTimestamp")
    }


def wait_for(what: str, check, timeout: float = 600):
    return wait_until(what, check, timeout=timeout)


def wait_for_phase(cluster, name: str, namespace: str, phase: str, timeout: float = 900) -> dict:
    def reached():
        status = run_status(cluster, name, namespace)
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"run {name} failed: {status}\n{describe(cluster, name, namespace)}")
        return status if status.get("phase") == phase else None

    return wait_for(f"run {name} {phase}", reached, timeout)


def describe(cluster, name: str, namespace: str) -> str:
    out = cluster.kubectl("describe", "trainingrun,pytorchjob,pods", "-n", namespace, check=False).stdout
    logs = cluster.kubectl("logs", "-n", namespace, "-l", f"training.kubeflow.org/job-name={name}",
                           "--tail=40", "--prefix", check=False)
    return out[-6000:] + "\n" + logs.stdout[-6000:] + logs.stderr[-2000:]


class LogFollower:
    """`kubectl logs -f` of one container into a file: keeps what a pod said after the pod is gone."""

    def __init__(self, cluster, namespace: str, pod: str, path: Path):
        self.path = path
        self.proc = subprocess.Popen(
            [cluster.binary("kubectl"), "--kubeconfig", cluster.kubeconfig, "logs", "-f", "-n", namespace, pod],
            stdout=path.open("wb"), stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_closed(self, timeout: float = 300) -> str:
        self.proc.wait(timeout=timeout)
        return self.text()
