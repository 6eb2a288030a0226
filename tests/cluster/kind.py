"""HELIXRUN_TEST_CLUSTER=kind: the same interface as ControlPlane, on a kind cluster.

Needs Docker + kind + kubectl on PATH (not available on the CI machine; used on
developer machines).  Nodes are real kind workers, labelled like the kwok
nodes (helixrun.io/pool, nvidia.com/gpu.product) with a fake
``nvidia.com/gpu`` capacity patched onto their status.  Pods really run, so
the exit-code annotation of the kwok setup is not available
(``supports_exit_code_annotation`` is False).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from .controlplane import GPU_PRODUCT_LABEL, GPU_RESOURCE, NODE_POOLS, POOL_LABEL, ClusterError, NodePool

HERE = Path(__file__).resolve().parent
TOOLS_DIR = HERE / "tools"
OPERATOR_MODULE = "github.com/kubeflow/training-operator"


def worker_plan(pools: Sequence[NodePool] = NODE_POOLS) -> list[tuple[str, NodePool]]:
    """(logical name, pool) for every worker, in kind's worker order."""
    return [(f"{p.name}-{i}", p) for p in pools for i in range(p.count)]


def kind_node_names(cluster_name: str, count: int) -> list[str]:
    """kind names workers <name>-worker, <name>-worker2, ..."""
    return [f"{cluster_name}-worker" + ("" if i == 0 else str(i + 1)) for i in range(count)]


def kind_config(pools: Sequence[NodePool] = NODE_POOLS) -> dict:
    nodes: list[dict] = [{"role": "control-plane"}]
    for logical, pool in worker_plan(pools):
        nodes.append(
            {
                "role": "worker",
                "labels": {POOL_LABEL: pool.name, GPU_PRODUCT_LABEL: pool.product, "helixrun.io/node": logical},
            }
        )
    return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": nodes}


def gpu_status_patch(gpus: int) -> str:
    key = GPU_RESOURCE.replace("/", "~1")
    return json.dumps(
        [
            {"op": "add", "path": f"/status/capacity/{key}", "value": str(gpus)},
            {"op": "add", "path": f"/status/allocatable/{key}", "value": str(gpus)},
        ]
    )


def operator_manifests_dir(go: str = "go") -> Path:
    """training-operator manifests of the version pinned in tools/go.mod (module cache)."""
    proc = subprocess.run(
        [go, "mod", "download", "-json", OPERATOR_MODULE],
        cwd=TOOLS_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=readonly", "GOWORK": "off"},
    )
    if proc.returncode != 0:
        raise ClusterError(f"go mod download {OPERATOR_MODULE} failed: {proc.stderr.strip()}")
    return Path(json.loads(proc.stdout)["Dir"]) / "manifests"


class KindCluster:
    supports_exit_code_annotation = False

    def __init__(
        self,
        name: str = "helixrun-test",
        state_dir: str | os.PathLike | None = None,
        kind: str = "kind",
        kubectl: str = "kubectl",
        pools: Sequence[NodePool] = NODE_POOLS,
        manifests_dir: str | os.PathLike | None = None,
    ):
        self.name = name
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="helixrun-kind-")).resolve()
        self.kubeconfig = str(self.state_dir / "kubeconfig")
        self.kind = kind
        self.kubectl_bin = kubectl
        self.pools = tuple(pools)
        self._manifests_dir = Path(manifests_dir) if manifests_dir else None
        self.server: str | None = None
        self.bin_dir = os.path.dirname(shutil.which(kubectl) or kubectl)
        # logical node name (a800-0 ...) -> kind node name
        plan = worker_plan(self.pools)
        self.nodes = dict(zip((n for n, _ in plan), kind_node_names(name, len(plan))))

    # command construction (unit-tested) ---------------------------------

    def create_command(self, config_path: str) -> list[str]:
        return [
            self.kind, "create", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig,
            "--config", config_path, "--wait", "180s",
        ]

    def delete_command(self) -> list[str]:
        return [self.kind, "delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig]

    def kubectl_command(self, *args: str) -> list[str]:
        return [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args]

    def node_patch_commands(self) -> list[list[str]]:
        cmds = []
        for logical, pool in worker_plan(self.pools):
            cmds.append(
                self.kubectl_command(
                    "patch", "node", self.nodes[logical], "--subresource=status", "--type=json",
                    "-p", gpu_status_patch(pool.gpus),
                )
            )
        return cmds

    def operator_install_commands(self, manifests_dir: Path) -> list[list[str]]:
        return [
            self.kubectl_command(
                "apply", "--server-side", "-k", str(manifests_dir / "overlays" / "standalone")
            ),
            self.kubectl_command(
                "-n", "kubeflow", "rollout", "status", "deployment/training-operator", "--timeout=300s"
            ),
        ]

    # lifecycle -----------------------------------------------------------

    def _run(self, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:4])} ... failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.kubectl_command(*args), input=input, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, obj: dict | list, server_side: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        docs = obj if isinstance(obj, list) else [obj]
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts", "--field-manager=helixrun-tests"]
        return self.kubectl(*args, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), check=check)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        return env

    def terminate_pod(self, namespace: str, pod: str, exit_code: int) -> None:
        raise NotImplementedError("exit codes can only be injected on the kwok control plane")

    def start(self) -> "KindCluster":
        for tool in (self.kind, self.kubectl_bin):
            if shutil.which(tool) is None:
                raise ClusterError(f"HELIXRUN_TEST_CLUSTER=kind needs {tool} on PATH")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.state_dir / "kind.json"
        cfg.write_text(json.dumps(kind_config(self.pools), indent=2))
        try:
            self._run(self.create_command(str(cfg)))
            for cmd in self.node_patch_commands():
                self._run(cmd)
            manifests = self._manifests_dir or operator_manifests_dir()
            for cmd in self.operator_install_commands(manifests):
                self._run(cmd)
            self.server = json.loads(self._run(self.kubectl_command("config", "view", "--raw", "-o", "json")))[
                "clusters"
            ][0]["cluster"]["server"]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        subprocess.run(self.delete_command(), capture_output=True)

    def __enter__(self) -> "KindCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
