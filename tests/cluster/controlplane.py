"""A real Kubernetes control plane for helixrun integration tests.

Runs, as local processes on 127.0.0.1 with free ports chosen at start:

* etcd                      (data in <state_dir>/etcd)
* kube-apiserver            (client-cert auth, RBAC, ServiceAccount admission off)
* kube-controller-manager   (garbage collector, node lifecycle, ... all default controllers)
* kube-scheduler
* kwok                      (fakes the kubelets of six GPU nodes; see NODE_POOLS)
* training-operator v1.9.4  (PyTorchJob only, real validating webhook)
* JobSet and Kubeflow Trainer v2 (TrainJob, their real webhooks, the stock
  ``torch-distributed`` runtime); ``training_operator=False`` or
  ``trainer=False`` leaves either Kubeflow out, as clusters that run only one do
* with ``real_node=True``: a real node (containerd + kubelet + kube-proxy +
  CoreDNS + a hostPath provisioner) in a network namespace of its own, pool
  ``local``; see realnode.py. The apiserver then listens on the host end of
  the node's veth pair instead of loopback, so pods can reach it.

Binaries come from tests/cluster/build.sh (pinned Go modules).  Only the
Python standard library is used here, plus the ``kubectl`` binary that
build.sh builds.

    cp = ControlPlane().start()     # raises ClusterError on failure (and cleans up)
    cp.kubeconfig, cp.server, cp.bin_dir
    cp.kubectl("get", "nodes")
    cp.stop()                      # every process group is gone afterwards

Test hooks that other suites use:

* Nodes are managed by kwok when annotated ``kwok.x-k8s.io/node: fake``.
  Labels: ``helixrun.io/pool`` (``a800`` | ``rtx4090``) and
  ``nvidia.com/gpu.product``; no taints.
* Annotate a Running pod with ``helixrun.io/test-exit-code: "<n>"`` and kwok
  terminates all its containers with exit code n: phase ``Failed`` (or
  ``Succeeded`` for "0"), ``state.terminated.exitCode == n``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import realnode

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
EXIT_CODE_ANNOTATION = "helixrun.io/test-exit-code"
POOL_LABEL = "helixrun.io/pool"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"

OPERATOR_NAMESPACE = "kubeflow"
WEBHOOK_CONFIG_NAME = "validator.training-operator.kubeflow.org"
WEBHOOK_SECRET_NAME = "training-operator-webhook-cert"
WEBHOOK_SERVICE_NAME = "training-operator"
PYTORCHJOB_WEBHOOK_PATH = "/validate-kubeflow-org-v1-pytorchjob"
TRAINER_NAMESPACE = "kubeflow-system"
# Hard-coded in training-operator v1.9.4 pkg/cert/cert.go (certDir) and the
# controller-runtime webhook default (os.TempDir()/k8s-webhook-server/...).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
# Our own machine-wide webhook CA lives next to it, so every control plane on
# this machine serves the very same webhook certificate (the cert dir above is
# shared by all training-operator processes; see README).
WEBHOOK_PKI_DIR = Path("/tmp/k8s-webhook-server/helixrun-pki")


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    gpus: int
    product: str
    cpu: str = "128"
    memory: str = "1Ti"
    pods: str = "110"


NODE_POOLS: tuple[NodePool, ...] = (
    NodePool("a800", 2, 8, "NVIDIA-A800-SXM4-80GB"),
    NodePool("rtx4090", 4, 2, "NVIDIA-GeForce-RTX-4090", cpu="32", memory="256Gi"),
)


class ClusterError(RuntimeError):
    """The control plane could not be built, started or stopped."""


# --------------------------------------------------------------------------
# binaries


def bin_dir_for_build(build: bool = True, stream: bool = True) -> str:
    """Return the bin dir of tests/cluster/build.sh, building it if needed.

    ``HELIXRUN_CLUSTER_BIN`` overrides the location (no build then).
    Raises ClusterError when the binaries are missing and cannot be built.
    """
    override = os.environ.get("HELIXRUN_CLUSTER_BIN")
    if override:
        missing = [b for b in REQUIRED_BINARIES if not os.access(os.path.join(override, b), os.X_OK)]
        if missing:
            raise ClusterError(f"HELIXRUN_CLUSTER_BIN={override} lacks {missing}")
        return override
    if not build:
        rc = subprocess.run(["bash", str(BUILD_SH), "--check"], capture_output=True)
        out = subprocess.run(["bash", str(BUILD_SH), "--print"], capture_output=True, text=True)
        if rc.returncode != 0 or out.returncode != 0:
            raise ClusterError(
                "control-plane binaries are not built; run tests/cluster/build.sh (or make cluster-bin)"
            )
        return out.stdout.strip().splitlines()[-1]
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SH)],
            stdout=subprocess.PIPE,
            stderr=None if stream else subprocess.PIPE,
            text=True,
        )
    except OSError as e:  # bash missing, ...
        raise ClusterError(f"cannot run {BUILD_SH}: {e}") from e
    if proc.returncode != 0:
        raise ClusterError(
            f"tests/cluster/build.sh failed (exit {proc.returncode}); "
            f"{(proc.stderr or '')[-4000:]}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ClusterError("tests/cluster/build.sh printed no bin dir")
    return lines[-1]


REQUIRED_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "training-operator",
    "jobset",
    "trainer-controller-manager",
)


# --------------------------------------------------------------------------
# small helpers


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a child, then SIGKILL it if it has not exited within `timeout` s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(
    what: str,
    check: Callable[[], object],
    timeout: float,
    interval: float = 0.2,
    alive: Callable[[], None] | None = None,
):
    """Poll ``check`` until it returns a truthy value; raise ClusterError on timeout.

    ``alive`` is called each round and should raise if a process died, so a
    crash is reported at once instead of after the timeout.
    """
    deadline = time.monotonic() + timeout
    last_err: object = None
    while True:
        if alive is not None:
            alive()
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_err = e
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err!r})")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def _proc_start_time(pid: int) -> str | None:
    """Start time of a pid (field 22 of /proc/pid/stat), to guard against pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return rest[19]


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()[0]


def _pgid_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_openssl(args: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _genkey(d: Path, name: str, kind: str = "ec") -> None:
    """ec: P-256 (fast to generate, fine for every k8s use); rsa: PKCS#1 RSA-2048."""
    if kind == "ec":
        run_openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key"], d)
    else:
        run_openssl(["genrsa", "-traditional", "-out", f"{name}.key", "2048"], d)


def _issue_cert(
    d: Path,
    name: str,
    ca: str,
    subject: str,
    ext: str,
    days: int = 3650,
    key: str = "ec",
) -> None:
    """Create d/name.key and d/name.crt signed by d/ca.{crt,key}."""
    _genkey(d, name, key)
    (d / f"{name}.ext").write_text(ext)
    run_openssl(["req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr"], d)
    run_openssl(
        [
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt",
        ],
        d,
    )


def _cert_days_left(path: Path) -> float:
    proc = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return -1
    end = proc.stdout.strip().split("=", 1)[1]
    t = _dt.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=_dt.timezone.utc)
    return (t - _dt.datetime.now(_dt.timezone.utc)).total_seconds() / 86400


def ensure_webhook_pki() -> Path:
    """Machine-wide CA + serving cert for the training-operator webhook.

    The cert is valid for ``training-operator.kubeflow.svc`` (what the
    operator's cert-controller checks) and IP 127.0.0.1 (what the apiserver
    dials).  The CA key is PKCS#1, as cert-controller parses it.  Created
    once (under a lock) and reused by every control plane on the machine.
    """
    d = WEBHOOK_PKI_DIR
    d.mkdir(parents=True, exist_ok=True)
    with open(d.parent / ".helixrun-pki.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ok = all((d / f).exists() for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"))
        if ok and _cert_days_left(d / "tls.crt") > 365 and _cert_days_left(d / "ca.crt") > 365:
            return d
        tmp = Path(tempfile.mkdtemp(prefix=".pki-", dir=d.parent))
        try:
            run_openssl(["genrsa", "-traditional", "-out", "ca.key", "2048"], tmp)
            run_openssl(
                [
                    "req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-sha256",
                    "-subj", "/O=training-operator/CN=training-operator-ca",
                    "-addext", "subjectAltName=DNS:training-operator-ca",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
                    "-out", "ca.crt",
                ],
                tmp,
            )
            dns = f"{WEBHOOK_SERVICE_NAME}.{OPERATOR_NAMESPACE}.svc"
            _issue_cert(
                tmp, "tls", "ca", f"/CN={dns}",
                "basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                f"subjectAltName=DNS:{dns},IP:127.0.0.1\n",
                key="rsa",
            )
            for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
                os.replace(tmp / f, d / f)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return d


def install_webhook_serving_certs(pki: Path) -> None:
    """Put tls.crt/tls.key where training-operator v1.9.4 looks (a Secret mount in-cluster)."""
    WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for f in ("tls.crt", "tls.key"):
        src = (pki / f).read_bytes()
        dst = WEBHOOK_CERT_DIR / f
        if not dst.exists() or dst.read_bytes() != src:
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(src)
            os.replace(tmp, dst)


# --------------------------------------------------------------------------
# manifests


def node_manifests(pools: Iterable[NodePool] = NODE_POOLS) -> list[dict]:
    nodes = []
    for pool in pools:
        for i in range(pool.count):
            name = f"{pool.name}-{i}"
            resources = {
                "cpu": pool.cpu,
                "memory": pool.memory,
                "pods": pool.pods,
                "ephemeral-storage": "1Ti",
                GPU_RESOURCE: str(pool.gpus),
            }
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {
                            KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "kubernetes.io/role": "agent",
                            "node-role.kubernetes.io/agent": "",
                            "type": "kwok",
                            POOL_LABEL: pool.name,
                            GPU_PRODUCT_LABEL: pool.product,
                            "nvidia.com/gpu.count": str(pool.gpus),
                        },
                    },
                    "spec": {},
                    "status": {"capacity": dict(resources), "allocatable": dict(resources)},
                }
            )
    return nodes


def _terminated_status(code: str) -> str:
    """kwok status template: every container terminated with exit code `code` (a template expression)."""
    return (
        "{{ $now := Now }}\n"
        f"{{{{ $code := {code} }}}}\n"
        '{{ $ok := eq $code "0" }}\n'
        "conditions:\n"
        "- lastTransitionTime: {{ $now | Quote }}\n"
        '  status: "True"\n'
        "  type: Initialized\n"
        "- lastTransitionTime: {{ $now | Quote }}\n"
        '  status: "False"\n'
        "  reason: PodCompleted\n"
        "  type: Ready\n"
        "- lastTransitionTime: {{ $now | Quote }}\n"
        '  status: "False"\n'
        "  reason: PodCompleted\n"
        "  type: ContainersReady\n"
        "containerStatuses:\n"
        "{{ range .spec.containers }}\n"
        "- image: {{ .image | Quote }}\n"
        "  name: {{ .name | Quote }}\n"
        "  ready: false\n"
        "  restartCount: 0\n"
        "  started: false\n"
        "  state:\n"
        "    terminated:\n"
        "      exitCode: {{ $code }}\n"
        "      finishedAt: {{ $now | Quote }}\n"
        '      reason: {{ if $ok }}"Completed"{{ else }}"Error"{{ end }}\n'
        "      startedAt: {{ $now | Quote }}\n"
        "{{ end }}\n"
        "phase: {{ if $ok }}Succeeded{{ else }}Failed{{ end }}\n"
    )


def _terminating_stage(name: str, expressions: list[dict], code: str) -> dict:
    """kwok Stage for Running pods matching `expressions`: every container terminates with `code`.
    Its weight beats kwok's own stages (pod-delete matches every deleted pod)."""
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": [
                *expressions, {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            ]},
            "weight": 10000,
            "next": {"statusTemplate": _terminated_status(code)},
        },
    }


def exit_code_stage() -> dict:
    """kwok Stage: annotation helixrun.io/test-exit-code=<n> on a Running pod
    terminates every container with exit code n (phase Failed, or Succeeded for 0)."""
    key = EXIT_CODE_ANNOTATION
    return _terminating_stage("helixrun-test-exit-code", [
        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
        {"key": f'.metadata.annotations["{key}"]', "operator": "Exists"},
    ], f'index .metadata.annotations "{key}"')


def sigterm_on_delete_stage() -> dict:
    """kwok Stage: a deleted Running pod that carries finalizers ends as a kubelet ends it, its trainer
    exiting 143 on SIGTERM (phase Failed). The Job controller removes its tracking finalizer from a pod
    only once the pod is terminal when the Job has a pod failure policy (JobSet's Jobs here); kwok's
    pod-delete alone would leave such a pod, and its namespace, terminating for ever."""
    return _terminating_stage("helixrun-sigterm-on-delete", [
        {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
        {"key": ".metadata.finalizers", "operator": "Exists"},
    ], '"143"')


def validating_webhook_configuration(webhook_port: int, ca_pem: bytes) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG_NAME},
        "webhooks": [
            {
                "name": "validator.pytorchjob.training-operator.kubeflow.org",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": f"https://127.0.0.1:{webhook_port}{PYTORCHJOB_WEBHOOK_PATH}",
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "rules": [
                    {
                        "apiGroups": ["kubeflow.org"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pytorchjobs"],
                    }
                ],
            }
        ],
    }


@dataclass(frozen=True)
class Webhook:
    """One admission webhook of a controller run on loopback: the path it serves and what it admits."""

    name: str
    path: str
    group: str
    version: str
    resource: str
    operations: tuple[str, ...] = ("CREATE", "UPDATE")
    # Pod webhooks admit only their controller's pods, as the upstream kustomize patches select them.
    only_labelled: str | None = None


def webhook_configurations(name: str, port: int, ca_pem: bytes, mutating: Sequence[Webhook],
                           validating: Sequence[Webhook], manifest: str) -> list[dict]:
    """Mutating and validating configurations pointing the apiserver at 127.0.0.1:port.

    Built here rather than kustomized (the harness needs only the standard library); every path
    must be one the upstream manifest (``manifest``) serves, so a renamed endpoint fails loudly.
    """
    def entry(hook: Webhook) -> dict:
        if hook.path not in manifest:
            raise ClusterError(f"{hook.path} not in the {name} webhook manifests")
        out = {
            "name": hook.name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://127.0.0.1:{port}{hook.path}", "caBundle": base64.b64encode(ca_pem).decode()},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "rules": [{"apiGroups": [hook.group], "apiVersions": [hook.version], "operations": list(hook.operations),
                       "resources": [hook.resource]}],
        }
        if hook.only_labelled:
            out["objectSelector"] = {"matchExpressions": [{"key": hook.only_labelled, "operator": "Exists"}]}
        return out

    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": f"{name}-{suffix}"},
         "webhooks": [entry(h) for h in hooks]}
        for kind, suffix, hooks in (("MutatingWebhookConfiguration", "mutating", mutating),
                                    ("ValidatingWebhookConfiguration", "validating", validating))
        if hooks
    ]


JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOBSET_WEBHOOKS = (
    [Webhook("mjobset.kb.io", "/mutate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io", "v1alpha2", "jobsets",
             ("CREATE",)),
     Webhook("mpod.kb.io", "/mutate--v1-pod", "", "v1", "pods", ("CREATE",), JOBSET_LABEL)],
    [Webhook("vjobset.kb.io", "/validate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io", "v1alpha2", "jobsets"),
     Webhook("vpod.kb.io", "/validate--v1-pod", "", "v1", "pods", ("CREATE",), JOBSET_LABEL)],
)
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_WEBHOOKS = (
    [Webhook("defaulter.trainjob.trainer.kubeflow.org", "/mutate-trainer-kubeflow-org-v1alpha1-trainjob",
             TRAINER_GROUP, "v1alpha1", "trainjobs")],
    [Webhook(f"validator.{kind}.trainer.kubeflow.org", f"/validate-trainer-kubeflow-org-v1alpha1-{kind}",
             TRAINER_GROUP, "v1alpha1", f"{kind}s")
     for kind in ("clustertrainingruntime", "trainingruntime", "trainjob")],
)


def pytorchjob(
    name: str,
    namespace: str = "default",
    master: int = 1,
    workers: int = 1,
    pool: str = "rtx4090",
    gpus: int = 1,
    restart_policy: str = "ExitCode",
    image: str = "docker.io/pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
) -> dict:
    """A minimal PyTorchJob for smoke tests (container ``pytorch``)."""

    def replica(n: int) -> dict:
        return {
            "replicas": n,
            "restartPolicy": restart_policy,
            "template": {
                "spec": {
                    "nodeSelector": {POOL_LABEL: pool},
                    "containers": [
                        {
                            "name": "pytorch",
                            "image": image,
                            "command": ["python", "-c", "print('hi')"],
                            "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                        }
                    ],
                }
            },
        }

    specs = {}
    if master:
        specs["Master"] = replica(master)
    if workers:
        specs["Worker"] = replica(workers)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"pytorchReplicaSpecs": specs},
    }


# --------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    name: str
    pid: int
    start_time: str | None
    log: str
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": self.log}

    def is_alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        st = _proc_state(self.pid)
        return st is not None and st != "Z" and _proc_start_time(self.pid) == self.start_time

    def group_alive(self) -> bool:
        """Anything left in the process group (the leader may have spawned children)."""
        return self.is_alive() or bool(self._group_members())

    def _group_members(self) -> list[int]:
        # The group id equals the leader's pid (start_new_session=True).
        if self.popen is None and _proc_start_time(self.pid) not in (None, self.start_time):
            return []  # pid reused by somebody else: not ours
        return _pgid_members(self.pid)

    def signal_group(self, sig: int) -> None:
        if not self.group_alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(Exception):
                self.popen.poll()

    def stop(self, timeout: float) -> None:
        """SIGTERM to the whole group, up to ``timeout`` s, then SIGKILL."""
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        if self.group_alive():
            self.signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while self.group_alive() and time.monotonic() < kill_deadline:
                self.reap()
                time.sleep(0.02)


class ControlPlane:
    """etcd + kube-apiserver + kcm + scheduler + kwok + training-operator on loopback."""

    STATE_FILE = "state.json"
    supports_exit_code_annotation = True

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        bin_dir: str | os.PathLike | None = None,
        kubeconfig: str | os.PathLike | None = None,
        build: bool = True,
        keep_state: bool | None = None,
        startup_timeout: float | None = None,
        verbosity: int = 1,
        die_with_parent: bool = False,
        real_node: bool = False,
        training_operator: bool = True,
        trainer: bool = True,
    ):
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="helixrun-cluster-")).resolve()
        self._bin_dir = str(bin_dir) if bin_dir else None
        self._build = build
        self.kubeconfig = str(Path(kubeconfig).resolve()) if kubeconfig else str(self.state_dir / "kubeconfig")
        self.keep_state = (not self._own_state_dir) if keep_state is None else keep_state
        # Scales every readiness wait; generous because a 2-core machine shared
        # by several test sessions (load average 20+) makes startup crawl.
        self.startup_timeout = float(startup_timeout or os.environ.get("HELIXRUN_CLUSTER_TIMEOUT") or 360)
        self.verbosity = verbosity
        # Children get SIGKILL when this process dies (PR_SET_PDEATHSIG), e.g. a
        # pytest run killed by a CI timeout. Off for the CLI, whose `up` exits.
        self.die_with_parent = die_with_parent
        self.real_node = real_node
        # Which Kubeflow runs the jobs: the training-operator v1 (PyTorchJob), Trainer v2 (TrainJob on JobSet), or both.
        self.training_operator, self.trainer = training_operator, trainer
        self.node_state: realnode.NodeState | None = None
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.server: str | None = None
        self.started = False
        self.timings: dict[str, float] = {}

    # -- public API ------------------------------------------------------

    @property
    def bin_dir(self) -> str:
        if self._bin_dir is None:
            self._bin_dir = bin_dir_for_build(build=self._build)
        return self._bin_dir

    def binary(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)

    @property
    def share_dir(self) -> Path:
        return Path(self.bin_dir) / "share"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        """Start everything; on any failure stop what was started and raise ClusterError."""
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException as e:
            logs = self.logs_dir
            try:
                self.stop(keep_state=True)
            except ClusterError as stop_err:
                raise ClusterError(f"startup failed ({e}) and cleanup failed: {stop_err}") from e
            if isinstance(e, ClusterError):
                raise ClusterError(f"{e}\n(component logs in {logs})") from e
            raise
        self.started = True
        self.timings["total"] = time.monotonic() - t0
        self._write_state()
        return self

    def stop(self, keep_state: bool | None = None, timeout: float = 10.0) -> None:
        """Terminate every process group started by this control plane.

        In reverse start order, one at a time (operator, kwok, scheduler, kcm,
        apiserver, etcd): SIGTERM to the whole group, up to ``timeout`` s,
        then SIGKILL.  Stopping etcd/apiserver together with their clients
        makes the clients hang in shutdown; in order it takes ~2-3 s.  A real
        node's containers outlive containerd (each has a shim of its own):
        afterwards they are killed and what they left behind (mounts,
        network namespaces) is removed.
        """
        for p in reversed(self.procs):
            if p.name == "containerd" and self.node_state is not None:
                # The kubelet is gone: remove the node's containers while containerd can still do it.
                realnode.clear_containers(self.node_state)
            p.stop(timeout)
        if self.node_state is not None:
            realnode.teardown(self.node_state)
            self.node_state = None
        leftover = [p for p in self.procs if p.group_alive()]
        for p in self.procs:
            if p.popen is not None:
                with contextlib.suppress(Exception):
                    p.popen.wait(timeout=1)
        self.started = False
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / self.STATE_FILE).unlink()
        keep = self.keep_state if keep_state is None else keep_state
        if not keep and not leftover:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if leftover:
            raise ClusterError(f"processes survived stop(): {[(p.name, p.pid) for p in leftover]}")

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    def alive(self) -> dict[str, bool]:
        return {p.name: p.is_alive() for p in self.procs}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.binary("kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, obj: dict | list, server_side: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        docs = obj if isinstance(obj, list) else [obj]
        data = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts", "--field-manager=helixrun-tests"]
        return self.kubectl(*args, input=data, check=check)

    def terminate_pod(self, namespace: str, pod: str, exit_code: int) -> None:
        """Make kwok terminate a Running pod's containers with ``exit_code`` (see exit_code_stage)."""
        self.kubectl("annotate", "--overwrite", "pod", pod, "-n", namespace, f"{EXIT_CODE_ANNOTATION}={int(exit_code)}")

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def env(self) -> dict[str, str]:
        """Environment for a child process that should talk to this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def describe(self) -> dict:
        return {
            "server": self.server,
            "kubeconfig": self.kubeconfig,
            "bin_dir": self.bin_dir,
            "state_dir": str(self.state_dir),
            "ports": self.ports,
            "procs": [p.to_json() for p in self.procs],
            "timings": self.timings,
            "real_node": self.node_state.describe() if self.node_state else None,
            "training_operator": self.training_operator,
            "trainer": self.trainer,
        }

    # -- persisted state (for the CLI: `up` in one process, `down` in another)

    def _write_state(self) -> None:
        path = self.state_dir / self.STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2))
        os.replace(tmp, path)

    @classmethod
    def from_state(cls, state_dir: str | os.PathLike) -> "ControlPlane":
        state_dir = Path(state_dir).resolve()
        data = json.loads((state_dir / cls.STATE_FILE).read_text())
        cp = cls(state_dir=state_dir, bin_dir=data["bin_dir"], kubeconfig=data["kubeconfig"], keep_state=True)
        cp.server = data["server"]
        cp.ports = data["ports"]
        cp.timings = data.get("timings", {})
        cp.training_operator, cp.trainer = data.get("training_operator", True), data.get("trainer", True)
        cp.procs = [Proc(d["name"], d["pid"], d["start_time"], d["log"]) for d in data["procs"]]
        if data.get("real_node"):
            cp.real_node = True
            cp.node_state = realnode.NodeState.from_json(data["real_node"])
        cp.started = True
        return cp

    # -- startup ---------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               pass_fds: tuple[int, ...] = ()) -> Proc:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group + session: killpg-able, detached
                env=env if env is not None else self._child_env(),
                cwd=self.state_dir,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                pass_fds=pass_fds,
            )
        p = Proc(name, popen.pid, _proc_start_time(popen.pid), str(log), popen)
        self.procs.append(p)
        return p

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "ETCD"))}
        env["KUBECONFIG"] = self.kubeconfig
        return env

    def _check_alive(self) -> None:
        for p in self.procs:
            if not p.is_alive():
                tail = ""
                with contextlib.suppress(OSError):
                    tail = Path(p.log).read_text(errors="replace")[-3000:]
                raise ClusterError(f"{p.name} exited during startup; log tail:\n{tail}")

    def _t(self, seconds: float) -> float:
        """A phase timeout: ``seconds`` at startup_timeout=180 (the default 360 doubles them)."""
        return seconds * self.startup_timeout / 180.0

    def _phase(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.monotonic() - t0, 2)

    def _start(self) -> None:
        sd = self.state_dir
        if (sd / self.STATE_FILE).exists():
            raise ClusterError(f"{sd} holds a running control plane (state.json); stop it first")
        for sub in ("etcd", "pki", "logs", "kcm", "scheduler", "kwok"):
            shutil.rmtree(sd / sub, ignore_errors=True)
        sd.mkdir(parents=True, exist_ok=True)
        (sd / "kcm").mkdir()
        (sd / "scheduler").mkdir()
        (sd / "kwok").mkdir()
        missing = [b for b in REQUIRED_BINARIES if not os.access(self.binary(b), os.X_OK)]
        if missing:
            raise ClusterError(f"missing binaries in {self.bin_dir}: {missing}")
        if not (self.share_dir / ".complete").exists():
            raise ClusterError(f"{self.share_dir} is incomplete; rerun tests/cluster/build.sh")

        t0 = time.monotonic()
        names = ["etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok", "op_metrics", "op_health", "op_webhook",
                 "jobset_health", "jobset_webhook", "trainer_health", "trainer_webhook"]
        self.ports = dict(zip(names, free_ports(len(names))))
        if self.real_node:
            realnode.check_prerequisites()
            self.node_state = realnode.NodeState.allocate(self.state_dir)
        self._make_pki()
        self.server = f"https://{self.apiserver_host}:{self.ports['apiserver']}"
        self._write_kubeconfig()
        self._phase("pki", t0)

        self._start_etcd()
        self._phase("etcd", t0)
        self._start_apiserver()
        self._phase("apiserver", t0)
        self._start_kcm_and_scheduler()
        self._phase("controllers", t0)
        self._start_kwok()
        self._phase("kwok_nodes_ready", t0)
        if self.training_operator:
            self._start_training_operator()
            self._phase("training_operator", t0)
        if self.trainer:
            self._start_jobset_and_trainer()
            self._phase("trainer_v2", t0)
        if self.node_state is not None:
            realnode.RealNode(self, self.node_state).start()
            self._phase("real_node", t0)

    @property
    def apiserver_host(self) -> str:
        """Loopback, or with a real node the host end of its veth pair (pods must reach the apiserver)."""
        return self.node_state.network.host_ip if self.node_state else "127.0.0.1"

    # PKI ---------------------------------------------------------------

    def _make_pki(self) -> None:
        d = self.state_dir / "pki"
        d.mkdir(parents=True)
        _genkey(d, "ca")
        run_openssl(
            [
                "req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-sha256",
                "-subj", "/CN=helixrun-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
                "-out", "ca.crt",
            ],
            d,
        )
        _issue_cert(
            d, "apiserver", "ca", "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName=IP:127.0.0.1,IP:{self.apiserver_host},IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        )
        _issue_cert(
            d, "admin", "ca", "/O=system:masters/CN=helixrun-admin",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
        # Aggregation-layer client (front proxy); also gives kcm/scheduler a
        # requestheader CA so their delegated authn stops logging errors.
        _issue_cert(
            d, "front-proxy-client", "ca", "/CN=front-proxy-client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
        _genkey(d, "sa")
        run_openssl(["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"], d)

    def _write_kubeconfig(self) -> None:
        d = self.state_dir / "pki"
        b64 = lambda p: base64.b64encode((d / p).read_bytes()).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "helixrun", "cluster": {"server": self.server, "certificate-authority-data": b64("ca.crt")}}
            ],
            "users": [
                {
                    "name": "helixrun-admin",
                    "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
                }
            ],
            "contexts": [{"name": "helixrun", "context": {"cluster": "helixrun", "user": "helixrun-admin"}}],
            "current-context": "helixrun",
        }
        path = Path(self.kubeconfig)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _https_get(self, url: str, client_cert: bool = True, verify: bool = True, timeout: float = 10) -> tuple[int, str]:
        d = self.state_dir / "pki"
        if verify:
            ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client_cert:
            ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    # components --------------------------------------------------------

    def _start_etcd(self) -> None:
        p = self.ports
        client = f"http://127.0.0.1:{p['etcd']}"
        peer = f"http://127.0.0.1:{p['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                self.binary("etcd"),
                "--name=helixrun",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=helixrun={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=10) as r:
                return json.loads(r.read()).get("health") == "true"

        wait_until("etcd /health", healthy, self._t(60), alive=self._check_alive)

    def _start_apiserver(self) -> None:
        d = self.state_dir / "pki"
        p = self.ports
        self._spawn(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                f"--bind-address={self.apiserver_host}",
                f"--advertise-address={self.apiserver_host}",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={self.state_dir / 'pki'}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                f"--requestheader-client-ca-file={d / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={d / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={d / 'front-proxy-client.key'}",
                # exec/logs reach the kubelet at its node IP, as the admin.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={d / 'admin.crt'}",
                f"--kubelet-client-key={d / 'admin.key'}",
                *self._pod_facing_apiserver_flags(),
                "--allow-privileged=true",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )

        def ready() -> bool:
            code, body = self._https_get(f"{self.server}/readyz")
            return code == 200 and body.strip() == "ok"

        wait_until("kube-apiserver /readyz", ready, self._t(120), alive=self._check_alive)

    def _pod_facing_apiserver_flags(self) -> list[str]:
        if self.node_state is not None:
            # Real pods get ServiceAccount tokens and find the apiserver through the kubernetes Service.
            return []
        return [
            # No token-bearing ServiceAccount admission: pods on kwok nodes never run.
            "--disable-admission-plugins=ServiceAccount",
            # The "kubernetes" Endpoints may not point at loopback; nothing needs them.
            "--endpoint-reconciler-type=none",
        ]

    def _start_kcm_and_scheduler(self) -> None:
        d = self.state_dir / "pki"
        p = self.ports
        kc = self.kubeconfig
        self._spawn(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kcm']}",
                f"--cert-dir={self.state_dir / 'kcm'}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                "--controllers=*",
                # Faster GC / namespace cleanup for tests.
                "--concurrent-gc-syncs=5",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self.binary("kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={self.state_dir / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )
        for name, port in (("kube-controller-manager", p["kcm"]), ("kube-scheduler", p["scheduler"])):
            wait_until(
                f"{name} /healthz",
                lambda port=port: self._https_get(f"https://127.0.0.1:{port}/healthz", client_cert=False, verify=False)
                == (200, "ok"),
                self._t(90),
                alive=self._check_alive,
            )

    def _start_kwok(self) -> None:
        share = self.share_dir / "kwok"
        cfg = self.state_dir / "kwok" / "stages.yaml"
        docs = [(share / f).read_text() for f in sorted(os.listdir(share)) if f.endswith(".yaml")]
        docs += [json.dumps(stage(), indent=1) for stage in (exit_code_stage, sigterm_on_delete_stage)]
        cfg.write_text("\n---\n".join(d.strip() for d in docs) + "\n")
        self.apply(node_manifests())
        self._spawn(
            "kwok",
            [
                self.binary("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={cfg}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.1.0.1",
            ],
            env={**self._child_env(), "HOME": str(self.state_dir / "kwok")},
        )
        want = {f"{pool.name}-{i}" for pool in NODE_POOLS for i in range(pool.count)}

        def nodes_ready() -> bool:
            items = self.get_json("nodes")["items"]
            ready = {
                n["metadata"]["name"]
                for n in items
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            }
            return want <= ready

        wait_until("kwok nodes Ready", nodes_ready, self._t(90), alive=self._check_alive)

    def _start_training_operator(self) -> None:
        manifests = self.share_dir / "training-operator" / "manifests"
        crd = manifests / "base" / "crds" / "kubeflow.org_pytorchjobs.yaml"
        webhook_manifest = (manifests / "base" / "webhook" / "manifests.yaml").read_text()
        if PYTORCHJOB_WEBHOOK_PATH not in webhook_manifest:
            raise ClusterError(f"{PYTORCHJOB_WEBHOOK_PATH} not in the training-operator webhook manifests")
        self.kubectl("apply", "--server-side", "--field-manager=helixrun-tests", "-f", str(crd))
        pki = ensure_webhook_pki()
        install_webhook_serving_certs(pki)
        secret_data = {f: base64.b64encode((pki / f).read_bytes()).decode() for f in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": WEBHOOK_SECRET_NAME, "namespace": OPERATOR_NAMESPACE},
                    "type": "Opaque",
                    "data": secret_data,
                },
                validating_webhook_configuration(self.ports["op_webhook"], (pki / "ca.crt").read_bytes()),
            ]
        )
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/pytorchjobs.kubeflow.org")
        p = self.ports
        init_template = self.state_dir / "training-operator-init-container.yaml"
        init_template.write_text(realnode.init_container_template())
        self._spawn(
            "training-operator",
            [
                self.binary("training-operator"),
                f"--kubeconfig={self.kubeconfig}",
                "--enable-scheme=pytorchjob",
                f"--metrics-bind-address=127.0.0.1:{p['op_metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{p['op_health']}",
                f"--webhook-server-port={p['op_webhook']}",
                f"--pytorch-init-container-image={realnode.INIT_IMAGE}",
                f"--pytorch-init-container-template-file={init_template}",
                "--leader-elect=false",
                "--zap-devel=false",
            ],
            env={**self._child_env(), "MY_POD_NAMESPACE": OPERATOR_NAMESPACE},
        )

        def op_healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{p['op_health']}/healthz", timeout=10) as r:
                return r.status == 200

        # Ready = the apiserver gets a denial from the webhook: that needs certs
        # injected, controllers and webhooks registered and the server up.
        # /readyz is not polled on purpose: its handler takes the manager lock
        # (GetWebhookServer) and so races with the operator's own setup.
        bad = pytorchjob("helixrun-webhook-probe", master=2, workers=1)

        def webhook_denies() -> bool:
            r = self.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
            if r.returncode == 0:
                raise ClusterError("webhook accepted Master replicas=2")
            if "denied the request" in r.stderr:
                return True
            raise ClusterError(r.stderr.strip())

        op = self.procs[-1]
        try:
            wait_until("training-operator /healthz", op_healthy, self._t(60), alive=self._check_alive)
            wait_until(
                "training-operator webhook to deny an invalid PyTorchJob",
                webhook_denies,
                self._t(120),
                alive=self._check_alive,
            )
        except ClusterError:
            # Go dumps every goroutine on SIGQUIT: shows where it is stuck (log kept).
            with contextlib.suppress(OSError):
                os.kill(op.pid, signal.SIGQUIT)
                time.sleep(1)
            raise

    def _start_jobset_and_trainer(self) -> None:
        """JobSet, then Kubeflow Trainer v2 on it, each with its webhooks on loopback.

        Serving certs are ours (the machine-wide webhook PKI, where controller-runtime looks), so
        both run with their own certificate management off and their metrics off.
        """
        share, p = self.share_dir, self.ports
        # CRD files are named <group>_<plural>.yaml; the kustomization beside them is not one.
        crds = sorted((share / "jobset" / "crds").glob("*_*.yaml")) + sorted((share / "trainer" / "crds").glob("*_*.yaml"))
        self.kubectl("apply", "--server-side", "--field-manager=helixrun-tests", *(f"--filename={c}" for c in crds))
        pki = ensure_webhook_pki()
        install_webhook_serving_certs(pki)
        ca = (pki / "ca.crt").read_bytes()
        self.apply(
            webhook_configurations("jobset", p["jobset_webhook"], ca, *JOBSET_WEBHOOKS,
                                   (share / "jobset" / "webhook" / "manifests.yaml").read_text())
            + webhook_configurations("trainer", p["trainer_webhook"], ca, *TRAINER_WEBHOOKS,
                                     (share / "trainer" / "webhook" / "manifests.yaml").read_text())
            + [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAINER_NAMESPACE}}]
        )
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/jobsets.jobset.x-k8s.io",
                     "crd/trainjobs.trainer.kubeflow.org", "crd/trainingruntimes.trainer.kubeflow.org",
                     "crd/clustertrainingruntimes.trainer.kubeflow.org")
        config = self.state_dir / "jobset-config.json"
        config.write_text(json.dumps({
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": p["jobset_webhook"], "host": "127.0.0.1", "certDir": str(WEBHOOK_CERT_DIR)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{p['jobset_health']}"},
        }))
        self._spawn("jobset", [self.binary("jobset"), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
                               "--metrics-bind-address=0", "--zap-devel=false"])
        config = self.state_dir / "trainer-config.json"
        config.write_text(json.dumps({
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{p['trainer_health']}",
                       "readinessEndpointName": "readyz", "livenessEndpointName": "healthz"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": p["trainer_webhook"], "host": "127.0.0.1"},
            "leaderElection": {"leaderElect": False},
            "certManagement": {"enable": False},
        }))
        self._spawn("trainer", [self.binary("trainer-controller-manager"), f"--kubeconfig={self.kubeconfig}",
                                f"--config={config}", "--zap-devel=false"],
                    env={**self._child_env(), "POD_NAMESPACE": TRAINER_NAMESPACE})

        def healthy(port_name: str) -> Callable[[], bool]:
            def check() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{p[port_name]}/healthz", timeout=10) as r:
                    return r.status == 200
            return check

        def denied(obj: dict, what: str, sign: str) -> Callable[[], bool]:
            """Ready = the apiserver gets the webhook's own refusal, `sign` in it (certs, server, handlers all up)."""
            def check() -> bool:
                r = self.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
                if r.returncode == 0:
                    raise ClusterError(f"the webhook accepted {what}")
                if sign in r.stderr:
                    return True
                raise ClusterError(r.stderr.strip())
            return check

        bad_jobset = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                      "metadata": {"name": "helixrun-webhook-probe", "namespace": "default"},
                      "spec": {"replicatedJobs": [{"name": "Not_A_DNS_Label", "replicas": 1, "template": {"spec": {
                          "template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "c", "image": "busybox"}]}}}}}]}}
        bad_trainjob = {"apiVersion": f"{TRAINER_GROUP}/v1alpha1", "kind": "TrainJob",
                        "metadata": {"name": "helixrun-webhook-probe", "namespace": "default"},
                        "spec": {"runtimeRef": {"name": "no-such-runtime"}}}
        wait_until("jobset /healthz", healthy("jobset_health"), self._t(60), alive=self._check_alive)
        # Only JobSet's webhook names the Job a replicated job would make: <jobset>-<replicated job>-<index>.
        wait_until("jobset webhook to deny an invalid JobSet",
                   denied(bad_jobset, "an invalid JobSet", "helixrun-webhook-probe-Not_A_DNS_Label-0"),
                   self._t(120), alive=self._check_alive)
        wait_until("trainer /healthz", healthy("trainer_health"), self._t(60), alive=self._check_alive)
        wait_until("trainer webhook to deny a TrainJob without its runtime",
                   denied(bad_trainjob, "a TrainJob naming no runtime", "denied the request"), self._t(120),
                   alive=self._check_alive)
        # The runtime a Trainer v2 install ships, through the trainer's validating webhook.
        self.kubectl("apply", "--server-side", "--field-manager=helixrun-tests",
                     "-f", str(share / "trainer" / "runtimes" / "torch_distributed.yaml"))


def running_control_plane(state_dir: str | os.PathLike) -> ControlPlane | None:
    """The control plane recorded in state_dir/state.json if any of its processes still runs."""
    path = Path(state_dir) / ControlPlane.STATE_FILE
    if not path.exists():
        return None
    cp = ControlPlane.from_state(state_dir)
    if any(p.is_alive() for p in cp.procs):
        return cp
    return None


if __name__ == "__main__":  # pragma: no cover - use `python -m tests.cluster`
    sys.exit("use: python -m tests.cluster up|down")
