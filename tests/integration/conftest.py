"""Integration fixtures: the real control plane (tests/cluster), our CRD and a running operator."""

from __future__ import annotations

import itertools
import uuid
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helixrun.backends import BACKENDS, Backend
from helixrun.children import RUN_LABEL
from tests.cluster.controlplane import free_ports, wait_until

ROOT = Path(__file__).parents[2]
CRD = ROOT / "crds" / "helixrun.io_trainingruns.yaml"
EXAMPLES = ROOT / "examples"
_namespaces = itertools.count()


class Operator:
    """`helixrun operator` (kopf's runner) as a process against the test cluster, with one backend (or auto)."""

    def __init__(self, cluster, log: Path, backend: str = "auto"):
        self.cluster, self.log, self.backend_choice = cluster, log, backend
        self.proc: subprocess.Popen | None = None

    @property
    def backend(self) -> Backend:
        """The backend a named choice runs runs with (auto: PyTorchJob on the shared cluster, which has both)."""
        return BACKENDS.get(self.backend_choice, BACKENDS["pytorchjob"])

    @property
    def job_kind(self) -> str:
        """The job's resource for kubectl, e.g. pytorchjobs.kubeflow.org."""
        return f"{self.backend.plural}.{self.backend.group}"

    def start(self) -> "Operator":
        port, self.metrics_port = free_ports(2)
        env = {"HELIXRUN_OPERATOR_METRICS_PORT": str(self.metrics_port)} | self.cluster.env()
        env |= {"HELIXRUN_TRAINER_IMAGE": "helixrun/trainer:test", "HELIXRUN_BACKEND": self.backend_choice}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helixrun.cli", "operator", "-A", "--standalone",
             "--liveness", f"http://127.0.0.1:{port}/healthz"],
            env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
        )

        def alive():
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")

        def healthy():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("operator liveness", healthy, timeout=120, alive=alive)
        return self

    def handled(self, handler: str) -> int:
        """How many calls of one handler have finished, from the operator's own /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "helixrun_operator_reconcile_duration_seconds_count" and sample.labels["handler"] == handler
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def crd_installed(cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingruns.helixrun.io", "--timeout=60s")
    return cluster


# Per module: the restart test runs operators of its own and must not race this one.
# Every test that takes the operator runs once per backend: the same bodies, PyTorchJob and TrainJob.
@pytest.fixture(scope="module", params=list(BACKENDS))
def operator(crd_installed, tmp_path_factory, request):
    op = Operator(crd_installed, tmp_path_factory.mktemp("operator") / "operator.log", request.param).start()
    yield op
    op.stop()


@pytest.fixture
def namespace(crd_installed):
    """A fresh namespace with what the chart gives each namespace: the trainer's ServiceAccount."""
    name = f"it-{next(_namespaces)}-{uuid.uuid4().hex[:5]}"
    crd_installed.kubectl("create", "namespace", name)
    crd_installed.kubectl("create", "serviceaccount", "helixrun-trainer", "-n", name)
    yield name
    # Free the fake GPUs for the next test: the cluster's capacity is shared.
    crd_installed.kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s", timeout=200)


def run_object(path: Path, **spec_changes) -> dict:
    obj = yaml.safe_load(path.read_text())
    obj["spec"].update(spec_changes)
    return obj


def apply(cluster, obj: dict, namespace: str, check: bool = True) -> subprocess.CompletedProcess:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=check)


def get(cluster, kind: str, name: str, namespace: str) -> dict | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def pods_of(cluster, run: str, namespace: str) -> list[dict]:
    """The run's trainer pods, whichever job made them (the operator labels every one with its run)."""
    return cluster.get_json("pods", "-n", namespace, "-l", f"{RUN_LABEL}={run}")["items"]


def node_rank(pod: dict) -> int:
    """The pod's node rank: PyTorchJob's master 0 and worker i at i + 1, a TrainJob's Job completion index."""
    labels = pod["metadata"]["labels"]
    if "batch.kubernetes.io/job-completion-index" in labels:
        return int(labels["batch.kubernetes.io/job-completion-index"])
    index = int(labels["training.kubeflow.org/replica-index"])
    return index if labels["training.kubeflow.org/replica-type"] == "master" else index + 1


def job_suspended(job: dict, backend: Backend) -> bool:
    """Whether the job carries the backend's suspend: the same patch the operator sends."""
    def carries(obj: dict, patch: dict) -> bool:
        return all(carries(obj.get(k) or {}, v) if isinstance(v, dict) else obj.get(k) == v for k, v in patch.items())

    return carries(job, backend.suspend_patch(True))


def run_status(cluster, name: str, namespace: str) -> dict:
    return (get(cluster, "trainingrun", name, namespace) or {}).get("status") or {}


def provide_volumes(cluster, namespace: str, claims: list[str]) -> None:
    """Static PVs pre-bound to the claims a run will make: this control plane has no provisioner."""
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}"},
            "spec": {
                "capacity": {"storage": "10Ti"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/helixrun-pv/{namespace}/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        for claim in claims
    ]
    cluster.apply(volumes)


def wait_for(what: str, check, timeout: float = 90):
    return wait_until(what, check, timeout=timeout)
