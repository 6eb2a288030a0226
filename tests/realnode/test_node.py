"""The real node itself (tests/cluster/realnode.py): what pods on it need from a cluster works, and
stopping the control plane leaves nothing behind on the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster import realnode
from tests.cluster.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.cluster

PROBE = realnode.INIT_IMAGE  # busybox: sh, grep, nslookup, nc through `busybox nc`


def pod(name: str, command: str, **spec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"helixrun.io/pool": realnode.POOL},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [{"name": "main", "image": PROBE, "command": ["sh", "-c", command],
                            "resources": {"limits": {"nvidia.com/gpu": 1}}, **spec.pop("container", {})}],
            **spec,
        },
    }


@pytest.fixture
def probe_namespace(real_cluster):
    name = f"node-{os.urandom(3).hex()}"
    real_cluster.kubectl("create", "namespace", name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def running(cluster, namespace: str, name: str) -> None:
    wait_until(f"pod {name} running", lambda: cluster.get_json("pod", name, "-n", namespace)["status"].get("phase")
               == "Running", timeout=120)


def exec_in(cluster, namespace: str, name: str, command: str) -> subprocess.CompletedProcess:
    return cluster.kubectl("exec", "-n", namespace, name, "--", "sh", "-c", command, check=False)


def test_the_node_is_ready_in_the_local_pool_with_gpus_to_schedule(real_cluster):
    node = real_cluster.get_json("node", realnode.NODE_NAME)
    assert node["metadata"]["labels"]["helixrun.io/pool"] == realnode.POOL
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == realnode.GPU_PRODUCT
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(realnode.GPUS)
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_a_pod_resolves_services_reaches_the_apiserver_and_writes_its_volume(real_cluster, probe_namespace):
    cluster, ns = real_cluster, probe_namespace
    objects = [
        pod("server", "busybox nc -ll -p 8080 -e echo served"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server-0"},
         "spec": {"clusterIP": "None", "selector": {"app": "server"}, "ports": [{"port": 8080}]}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "scratch"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        pod("client", "echo client started; sleep 600",
            container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
            volumes=[{"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}}]),
    ]
    cluster.apply([dict(o, metadata={**o["metadata"], "namespace": ns}) for o in objects])
    running(cluster, ns, "server")
    running(cluster, ns, "client")
    # The training-operator's worker init container waits for the master's Service name exactly like this.
    template = yaml.safe_load(realnode.init_container_template().replace("{{.MaxTries}}", "30")
                              .replace("{{.MasterAddr}}", "server-0").replace("{{.InitContainerImage}}", PROBE))
    found = exec_in(cluster, ns, "client", template[0]["command"][2])
    assert found.returncode == 0, found.stdout + found.stderr
    served = exec_in(cluster, ns, "client", "busybox nc -w 5 server-0 8080")
    assert "served" in served.stdout, served.stdout + served.stderr
    # The kubernetes Service leads to the apiserver (kube-proxy in the node's namespace), with a token to use.
    api = exec_in(cluster, ns, "client", "echo | busybox nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT"
                  " && test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo reachable")
    assert "reachable" in api.stdout, api.stdout + api.stderr
    wrote = exec_in(cluster, ns, "client", "echo kept > /scratch/file && cat /scratch/file && id -u")
    assert wrote.stdout.split() == ["kept", "1000"], wrote.stdout + wrote.stderr
    claim = cluster.get_json("pvc", "scratch", "-n", ns)
    assert claim["spec"]["storageClassName"] == realnode.STORAGE_CLASS and claim["status"]["phase"] == "Bound"
    volume = cluster.get_json("pv", claim["spec"]["volumeName"])
    assert (Path(volume["spec"]["hostPath"]["path"]) / "file").read_text() == "kept\n"
    assert "client started" in cluster.kubectl("logs", "-n", ns, "client").stdout


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_stopping_a_control_plane_leaves_no_process_mount_or_network_namespace(real_cluster, tmp_path):
    """Its own control plane, with a container running when it stops."""
    before = _netns()
    cp = ControlPlane(state_dir=tmp_path / "cp", keep_state=False, bin_dir=real_cluster.bin_dir,
                      die_with_parent=True, real_node=True).start()
    state = cp.node_state
    try:
        assert state.network.netns in _netns() - before
        cp.apply(dict(pod("sleeper", "sleep 600"), metadata={"name": "sleeper", "namespace": "default"}))
        running(cp, "default", "sleeper")
    finally:
        cp.stop()
    assert _netns() <= before, f"network namespaces left: {_netns() - before}"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts and state.run_dir not in mounts
    assert not realnode._pids_with_arg(state.containerd_address), "a container shim survived"
    assert not (tmp_path / "cp").exists(), "the state folder (containerd's root, the volumes) is removed"
