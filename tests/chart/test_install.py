"""The chart installed into the real test control plane (tests/cluster): CRDs
served, the operator workload up, RBAC doing what the templates say, CRDs kept
on uninstall. The integration suite installs it the same way (install_chart)."""

from __future__ import annotations

import json

import pytest
import yaml

from helixrun.render import RenderSettings, trainer_account
from tests.chart.helm import install_chart, uninstall_chart
from tests.cluster.controlplane import terminate

pytestmark = pytest.mark.cluster

RELEASE = "hxchart"
NAMESPACE = "helixrun-chart-test"
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-helixrun-operator"
TRAINER_SA = f"system:serviceaccount:{NAMESPACE}:helixrun-trainer"


def can_i(cluster, who: str, verb: str, resource: str, namespace: str = NAMESPACE, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "--as", who, "-n", namespace]
    if subresource:
        args += ["--subresource", subresource]
    out = cluster.kubectl(*args, check=False).stdout.strip()
    return out == "yes"


@pytest.fixture(scope="module")
def release(cluster):
    # Pod Security admission enforces `restricted` here: a non-compliant operator pod is never created.
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/warn=restricted")
    objects = install_chart(cluster.kubeconfig, RELEASE, NAMESPACE, {}, wait=True, timeout="3m")
    yield objects
    uninstall_chart(cluster.kubeconfig, RELEASE, NAMESPACE)


def test_install_serves_the_crds_and_runs_the_operator(cluster, release):
    crd = cluster.get_json("crd", "trainingruns.helixrun.io")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"
    assert cluster.kubectl("get", "tr", "-n", NAMESPACE).returncode == 0
    deployment = cluster.get_json("deployment", f"{RELEASE}-helixrun-operator", "-n", NAMESPACE)
    assert deployment["status"].get("readyReplicas") == 1
    pools = cluster.get_json("configmap", f"{RELEASE}-helixrun-pools", "-n", NAMESPACE)
    assert "a800" in pools["data"]["pools.yaml"]
    # ...and the restricted policy really is enforced in that namespace.
    refused = cluster.kubectl("run", "privileged-probe", "--image=busybox:1.37", "-n", NAMESPACE,
                              "--dry-run=server", "--privileged", check=False)
    assert refused.returncode != 0 and "PodSecurity" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    "verb, resource, subresource, allowed",
    [
        ("patch", "trainingruns.helixrun.io", "status", True),
        ("watch", "trainingruns.helixrun.io", "", True),
        ("create", "pytorchjobs.kubeflow.org", "", True),
        ("delete", "pods", "", True),
        ("create", "persistentvolumeclaims", "", True),
        ("delete", "persistentvolumeclaims", "", False),
        ("create", "events.events.k8s.io", "", True),
        ("delete", "pytorchjobs.kubeflow.org", "", True),
        ("patch", "pods", "", False),
        ("create", "pods", "", False),
        ("create", "serviceaccounts", "", True),
        ("delete", "serviceaccounts", "", False),
        ("create", "serviceaccounts", "token", False),
        ("create", "roles.rbac.authorization.k8s.io", "", True),
        ("patch", "roles.rbac.authorization.k8s.io", "", False),
        ("create", "rolebindings.rbac.authorization.k8s.io", "", True),
        ("delete", "rolebindings.rbac.authorization.k8s.io", "", False),
        ("get", "secrets", "", False),
        ("delete", "trainingruns.helixrun.io", "", False),
        ("create", "trainingruns.helixrun.io", "", False),
    ],
)
def test_operator_rbac_in_the_api_server(cluster, release, verb, resource, subresource, allowed):
    assert can_i(cluster, OPERATOR_SA, verb, resource, "default", subresource) is allowed


@pytest.mark.parametrize(
    "verb, resource, subresource, allowed",
    [
        ("get", "trainingruns.helixrun.io", "", False),
        ("patch", "trainingruns.helixrun.io", "status", True),
        ("patch", "trainingruns.helixrun.io", "", False),
        ("list", "trainingruns.helixrun.io", "", False),
        ("get", "pods", "", False),
        ("get", "secrets", "", False),
    ],
)
def test_trainer_rbac_in_the_api_server(cluster, release, verb, resource, subresource, allowed):
    assert can_i(cluster, TRAINER_SA, verb, resource, NAMESPACE, subresource) is allowed
    assert not can_i(cluster, TRAINER_SA, "patch", "trainingruns.helixrun.io", "default", "status")


def test_the_operator_may_give_the_trainer_its_account_in_any_namespace(cluster, release):
    """The API server's escalation check passes: the operator holds the one rule it grants."""
    namespace = "hxchart-fresh"
    cluster.kubectl("create", "namespace", namespace, check=False)
    try:
        objects = trainer_account(namespace, RenderSettings())
        created = cluster.kubectl("create", "--as", OPERATOR_SA, "-f", "-", check=False,
                                  input=yaml.safe_dump_all(objects))
        assert created.returncode == 0, created.stderr
        trainer = f"system:serviceaccount:{namespace}:helixrun-trainer"
        assert can_i(cluster, trainer, "patch", "trainingruns.helixrun.io", namespace, "status")
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_peering_mode_runs_a_statefulset_with_a_cluster_peering(cluster, release):
    install_chart(cluster.kubeconfig, RELEASE, NAMESPACE, {"operator": {"replicas": 2}}, wait=True, timeout="3m")
    try:
        statefulset = cluster.get_json("statefulset", f"{RELEASE}-helixrun-operator", "-n", NAMESPACE)
        assert statefulset["status"].get("readyReplicas") == 2
        assert cluster.get_json("clusterkopfpeering", "helixrun")["metadata"]["name"] == "helixrun"
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
        indexes = sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods)
        assert indexes == ["0", "1"], "distinct ordinals give distinct kopf priorities"
        assert not cluster.kubectl("get", "deployment", "-n", NAMESPACE, "-o", "name").stdout.strip()
        assert can_i(cluster, OPERATOR_SA, "patch", "clusterkopfpeerings.kopf.dev")
    finally:
        install_chart(cluster.kubeconfig, RELEASE, NAMESPACE, {}, wait=True, timeout="3m")


def test_uninstall_keeps_the_crds_and_the_runs(cluster, release):
    uninstall_chart(cluster.kubeconfig, RELEASE, NAMESPACE)
    try:
        crds = json.loads(cluster.kubectl("get", "crd", "-o", "json").stdout)["items"]
        names = {c["metadata"]["name"] for c in crds}
        assert {"trainingruns.helixrun.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= names
    finally:
        install_chart(cluster.kubeconfig, RELEASE, NAMESPACE, {}, wait=True, timeout="3m")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _static_volumes(cluster, namespace: str, claims: list[str]) -> list[str]:
    """PVs pre-bound to the run's claims: the test control plane has no provisioner."""
    names = []
    for claim in claims:
        name = f"{namespace}-{claim}"
        cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "10Ti"}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/helixrun-pv/{name}"},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })
        names.append(name)
    return names


def test_operator_runs_with_only_the_charts_rbac(cluster, release, tmp_path):
    """The operator, authenticated as the chart's ServiceAccount and configured by
    the chart's env, creates a run's children and restarts its gang after a
    retryable failure, without one 403; the trainer pod passes `restricted`."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    token = cluster.kubectl("create", "token", f"{RELEASE}-helixrun-operator", "-n", NAMESPACE,
                            "--duration=1h").stdout.strip()
    raw = yaml.safe_load(cluster.kubectl("config", "view", "--raw", "--minify").stdout)
    server = raw["clusters"][0]["cluster"]
    kubeconfig = tmp_path / "operator-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "c", "cluster": {"server": server["server"],
                                                "certificate-authority-data": server["certificate-authority-data"]}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "operator"}}],
    }))
    deployment = cluster.get_json("deployment", f"{RELEASE}-helixrun-operator", "-n", NAMESPACE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pools = tmp_path / "pools.yaml"
    pools.write_text(cluster.get_json("configmap", f"{RELEASE}-helixrun-pools", "-n", NAMESPACE)["data"]["pools.yaml"])
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["HELIXRUN_POOLS_FILE"] = str(pools)
    env["HELIXRUN_OPERATOR_METRICS_PORT"] = str(_free_port())
    args = [a.replace(":8080/", f":{_free_port()}/").replace("0.0.0.0", "127.0.0.1") for a in container["args"]]
    helixrun = Path(sys.executable).with_name("helixrun")
    log = tmp_path / "operator.log"
    run = yaml.safe_load((repo / "examples" / "run-genechat.yaml").read_text())
    claims = [run["spec"]["data"]["pvc"], "helixrun-model-cache", "genechat-checkpoints"]
    volumes = _static_volumes(cluster, NAMESPACE, claims)
    # The dataset claim is the user's, made before the run.
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claims[0], "namespace": NAMESPACE},
                   "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volumes[0],
                            "resources": {"requests": {"storage": "1Gi"}}}})

    def wait(what, check, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"operator exited:\n{log.read_text()[-4000:]}"
            result = check()
            if result:
                return result
            time.sleep(1)
        pytest.fail(f"{what} within {timeout} s; operator log:\n{log.read_text()[-4000:]}")

    def master_pod():
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "training.kubeflow.org/job-name=genechat")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"
                     and not p["metadata"].get("deletionTimestamp")), None)

    with log.open("w") as out:
        proc = subprocess.Popen([str(helixrun), "operator", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(repo / "examples" / "run-genechat.yaml"))
        wait("a PyTorchJob", lambda: cluster.kubectl("get", "pytorchjob", "genechat", "-n", NAMESPACE,
                                                     check=False).returncode == 0)
        for kind in ("configmap/genechat-config", "pvc/genechat-checkpoints", "service/genechat-metrics"):
            assert cluster.kubectl("get", kind, "-n", NAMESPACE, check=False).returncode == 0, kind
        first = wait("a Running trainer pod (admitted under restricted Pod Security)", master_pod)
        # A retryable failure (SIGKILL, 137): the operator marks the pod, restarts the gang, counts it.
        cluster.kubectl("annotate", "pod", first["metadata"]["name"], "-n", NAMESPACE, "helixrun.io/test-exit-code=137")
        wait("the restart counted in the run's status", lambda: (cluster.get_json(
            "trainingrun", "genechat", "-n", NAMESPACE).get("status") or {}).get("restarts", 0) >= 1)
        cluster.kubectl("delete", "trainingrun", "genechat", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
        text = log.read_text()
        assert "Forbidden" not in text and " 403" not in text, f"the chart's RBAC is missing a rule:\n{text[-4000:]}"
    finally:
        # Delete the run while its operator still runs (it owns the finalizer), so the
        # gang's fake GPUs are free for the rest of the session even after a failure.
        cluster.kubectl("delete", "trainingrun", "genechat", "-n", NAMESPACE, "--ignore-not-found",
                        "--wait=true", "--timeout=30s", check=False)
        cluster.kubectl("patch", "trainingrun", "genechat", "-n", NAMESPACE, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)
        terminate(proc, timeout=20)
        cluster.kubectl("delete", "pytorchjob", "genechat", "-n", NAMESPACE, "--ignore-not-found", "--wait=false",
                        check=False)
        for pvc in claims:
            cluster.kubectl("delete", "pvc", pvc, "-n", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        for pv in volumes:
            cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def test_watched_namespaces_get_roles_and_namespaced_peerings(cluster, release):
    watched = ["hxchart-watch-a", "hxchart-watch-b"]
    for ns in watched:
        cluster.kubectl("create", "namespace", ns, check=False)
    name = "hxwatch"
    values = {"operator": {"replicas": 2, "watchNamespaces": watched}}
    install_chart(cluster.kubeconfig, name, NAMESPACE, values, wait=True, timeout="3m")
    try:
        operator = f"system:serviceaccount:{NAMESPACE}:{name}-helixrun-operator"
        for ns in watched:
            assert can_i(cluster, operator, "create", "pytorchjobs.kubeflow.org", ns)
            assert can_i(cluster, operator, "patch", "kopfpeerings.kopf.dev", ns)
            assert cluster.get_json("kopfpeering", "helixrun", "-n", ns)["metadata"]["namespace"] == ns
            trainer = f"system:serviceaccount:{ns}:helixrun-trainer"
            assert can_i(cluster, trainer, "patch", "trainingruns.helixrun.io", ns, "status")
        assert not can_i(cluster, operator, "create", "pytorchjobs.kubeflow.org", "default")
        assert can_i(cluster, operator, "watch", "customresourcedefinitions.apiextensions.k8s.io", "default")
    finally:
        uninstall_chart(cluster.kubeconfig, name, NAMESPACE)
        for ns in watched:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_every_option_passes_server_side_validation(cluster, release):
    """values-all.yaml rendered and dry-run applied: the API server accepts every object
    (the Prometheus Operator kinds aside: the test cluster has no such CRDs)."""
    from pathlib import Path

    import yaml

    from tests.chart import helm

    values_all = Path(__file__).with_name("values-all.yaml")
    values = yaml.safe_load(values_all.read_text())
    namespaces = values["trainer"]["namespaces"] + [values["monitoring"]["dashboards"]["namespace"]]
    for ns in namespaces:
        cluster.kubectl("create", "namespace", ns, check=False)
    objects = [o for o in helm.template(values_files=[values_all], namespace=NAMESPACE)
               if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {"StatefulSet", "KopfPeering", "Role", "ClusterRole"} <= {o["kind"] for o in objects}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-",
                             input=yaml.safe_dump_all(objects), check=False)
    assert result.returncode == 0, result.stderr
