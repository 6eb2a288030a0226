"""The helixrun chart: lint, renders, schema, security, RBAC, pools, CRDs, NOTES."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from helixrun.render import RenderSettings, trainer_account
from tests.chart import helm
from tests.chart.helm import CHART, REPO, HelmError

VALUES_ALL = Path(__file__).with_name("values-all.yaml")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod", "CronJob"}
RBAC_KINDS = {"Role", "ClusterRole"}


@pytest.fixture(scope="module")
def default_objects():
    return helm.template()


@pytest.fixture(scope="module")
def all_objects():
    return helm.template(values_files=[VALUES_ALL])


def kinds(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = kinds(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objects):
    for o in objects:
        if o["kind"] in POD_KINDS:
            spec = o["spec"]
            if o["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            yield o, spec if o["kind"] == "Pod" else spec["template"]["spec"]


def operator_container(objects):
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 1, "exactly one operator workload"
    (container,) = workloads[0]["spec"]["template"]["spec"]["containers"]
    return container


def rules_of(role):
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]]


def grants(roles):
    """{(group, resource): set(verbs)} over a list of Roles/ClusterRoles."""
    out: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for groups, resources, verbs in rules_of(role):
            for g in groups:
                for r in resources:
                    out.setdefault((g, r), set()).update(verbs)
    return out


# -- lint and render --------------------------------------------------------


def test_lint_strict_with_default_values():
    helm.lint()


def test_lint_strict_with_every_option_set():
    helm.lint(values_files=[VALUES_ALL])


@pytest.mark.parametrize("name", ["default", "every option"])
def test_renders_parseable_kubernetes_objects(name, default_objects, all_objects):
    objects = default_objects if name == "default" else all_objects
    assert objects, "nothing rendered"
    for o in objects:
        assert {"apiVersion", "kind", "metadata"} <= set(o), f"not a Kubernetes object: {o}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", o["metadata"]["name"]), o["metadata"]["name"]
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "helixrun", f"{o['kind']}/{o['metadata']['name']} unlabelled"


def test_default_render_has_the_expected_objects(default_objects):
    found = {(o["kind"], o["metadata"]["name"]) for o in default_objects}
    assert found == {
        ("ServiceAccount", "hx-helixrun-operator"),
        ("ServiceAccount", "helixrun-trainer"),
        ("ConfigMap", "hx-helixrun-pools"),
        ("ClusterRole", "hx-helixrun-operator"),
        ("ClusterRoleBinding", "hx-helixrun-operator"),
        ("Role", "helixrun-trainer"),
        ("RoleBinding", "helixrun-trainer"),
        ("Service", "hx-helixrun-operator-metrics"),
        ("Deployment", "hx-helixrun-operator"),
    }
    for o in default_objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "helixrun-system", f"{o['kind']} not in the release namespace"


def test_every_option_renders_monitors_peering_and_namespaced_rbac(all_objects):
    found = {o["kind"] for o in all_objects}
    assert {"StatefulSet", "KopfPeering", "PodMonitor", "ServiceMonitor", "PrometheusRule", "Role"} <= found
    assert "Deployment" not in found and "ClusterKopfPeering" not in found


def _leaf_paths(node, prefix=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


def test_values_all_sets_every_value():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    every = yaml.safe_load(VALUES_ALL.read_text())
    missing = [".".join(p) for p in _leaf_paths(defaults) if p[0] != "pools" and not _has_path(every, p)]
    assert not missing, f"tests/chart/values-all.yaml does not exercise: {missing}"


def _has_path(node, path):
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


# -- values.schema.json -----------------------------------------------------


@pytest.mark.parametrize(
    "values, where",
    [
        ({"bogus": 1}, ""),
        ({"operator": {"replica": 2}}, "/operator"),
        ({"operator": {"resources": {"request": {"cpu": "1"}}}}, "/operator/resources"),
        ({"operator": {"podSecurityContext": {"runAsUsr": 0}}}, "/operator/podSecurityContext"),
        ({"trainer": {"modelCache": {"storageClass": "x"}}}, "/trainer/modelCache"),
        ({"monitoring": {"podMonitor": {"enable": True}}}, "/monitoring/podMonitor"),
        ({"pools": [{"name": "p", "gpuProduct": "X", "memoryGiB": 8, "gpusPerNode": 1, "bf16": True,
                     "tf32": True, "flashAttention2": True, "nvlink": False, "peakTFLOPS": 10, "gpus": 1}]},
         "/pools/0"),
    ],
)
def test_schema_refuses_unknown_keys(values, where):
    for command in (helm.lint, helm.template):
        with pytest.raises(HelmError) as refused:
            command(values)
        assert "additional properties" in str(refused.value) and f"at '{where}'" in str(refused.value), str(
            refused.value
        )


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"replicas": 0}},
        {"operator": {"watchNamespaces": ["Not_A_Namespace"]}},
        {"operator": {"image": {"pullPolicy": "Sometimes"}}},
        {"trainer": {"modelCache": {"size": "lots"}}},
        {"pools": []},
        {"pools": [{"name": "p"}]},
        {"operator": {"containerSecurityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}},
        # A factor of 1 fires whenever the loss moves at all.
        {"monitoring": {"prometheusRule": {"rules": {"divergeFactor": 1}}}},
    ],
)
def test_schema_refuses_bad_values(values):
    with pytest.raises(HelmError, match="values don't meet the specifications"):
        helm.template(values)


@pytest.mark.parametrize(
    "values, where",
    [
        ({"monitoring": {"podMonitor": {"interval": "soon"}}}, "/monitoring/podMonitor/interval"),
        ({"operator": {"resources": {"requests": {"cpu": "lots"}}}}, "/operator/resources/requests/cpu"),
        ({"trainer": {"namespaces": ["x" * 64]}}, "/trainer/namespaces/0"),
        ({"pools": [{"name": "p", "gpuProduct": "X", "memoryGiB": 8, "gpusPerNode": 1, "bf16": True, "tf32": True,
                     "flashAttention2": True, "nvlink": False, "peakTFLOPS": 10, "cpuPerGPU": "0"}]},
         "/pools/0/cpuPerGPU"),
    ],
)
def test_schema_names_the_bad_value_behind_a_shared_definition(values, where):
    """Values checked by a definition of the generated schema (durations, quantities, names) are refused by path."""
    with pytest.raises(HelmError, match="values don't meet the specifications") as refused:
        helm.template(values)
    assert f"at '{where}'" in str(refused.value), str(refused.value)


def test_a_fractional_divergence_factor_reaches_the_alert():
    objects = helm.template({"monitoring": {"prometheusRule": {"enabled": True, "rules": {"divergeFactor": 1.5}}}})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"] if r["alert"] == "HelixrunLossDiverging"]
    assert exprs and "> 1.5 * avg by (namespace, run)" in exprs[0]


def _schema_objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for k, v in node.items():
            yield from _schema_objects(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _schema_objects(v, f"{path}[{i}]")


# Objects whose keys belong to another API: Kubernetes types and Prometheus
# relabel configs go through unchanged (the API server or the Prometheus
# Operator validates them), and Helm's `global`.
PASS_THROUGH = {
    "$.properties.global": "Helm global values",
    "$.properties.operator.properties.extraEnv.items": "Kubernetes EnvVar",
    "$.properties.operator.properties.podSecurityContext.properties.sysctls.items": "Kubernetes Sysctl",
    "$.properties.operator.properties.tolerations.items": "Kubernetes Toleration",
    "$.properties.operator.properties.affinity": "Kubernetes Affinity",
    "$.properties.pools.items.properties.tolerations.items": "Kubernetes Toleration",
    **{
        f"$.properties.monitoring.properties.{m}.properties.{r}.items": "Prometheus RelabelConfig"
        for m in ("podMonitor", "serviceMonitor")
        for r in ("relabelings", "metricRelabelings")
    },
}


def test_schema_closes_every_object_it_defines():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    open_objects = set()
    for path, node in _schema_objects(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        elif "additionalProperties" not in node:  # a typed map (labels, requests) has additionalProperties: {schema}
            open_objects.add(path)
    assert open_objects == set(PASS_THROUGH), (
        f"objects open to any key that are not a documented pass-through: {sorted(open_objects - set(PASS_THROUGH))}"
    )


def test_every_value_is_documented():
    """helm-docs style: each key has a `# --` comment, on itself or on the map holding it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for n, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = []
        j = n - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            above.append(lines[j])
            j -= 1
        documented = any("# --" in c for c in above) or any(d for _, d in stack)
        following = next((l for l in lines[n + 1:] if l.strip() and not l.strip().startswith("#")), "")
        is_parent = len(following) - len(following.lstrip()) > indent or following.lstrip().startswith("- ")
        if not documented and not is_parent:
            undocumented.append(f"line {n + 1}: {m.group(2)}")
        stack.append((indent, documented))
    assert not undocumented, f"values.yaml keys without a `# --` comment: {undocumented}"


# -- the operator workload --------------------------------------------------


def test_single_replica_is_a_recreate_deployment_running_standalone(default_objects):
    deployment = one(default_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two kopf operators would act at once"
    container = operator_container(default_objects)
    assert container["command"] == ["helixrun", "operator"]
    assert container["args"] == ["--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
    assert not kinds(default_objects, "StatefulSet") and not kinds(default_objects, "ClusterKopfPeering")


def test_replicas_above_one_form_a_kopf_peering_with_distinct_priorities():
    objects = helm.template({"operator": {"replicas": 3}})
    assert not kinds(objects, "Deployment")
    statefulset = one(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 3
    container = operator_container(objects)
    assert "--standalone" not in container["args"]
    assert "--peering=helixrun" in container["args"]
    # Each pod's priority is minus its ordinal: distinct, and pod 0 wins.
    assert "--priority=-$(HELIXRUN_OPERATOR_ORDINAL)" in container["args"]
    ordinal = next(e for e in container["env"] if e["name"] == "HELIXRUN_OPERATOR_ORDINAL")
    assert ordinal["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    env_names = [e["name"] for e in container["env"]]
    assert env_names.index("HELIXRUN_OPERATOR_ORDINAL") == 0, "$(VAR) expansion needs the variable defined first"
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "helixrun" and peering["apiVersion"] == "kopf.dev/v1"
    assert grants(kinds(objects, "ClusterRole"))[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}
    headless = next(o for o in kinds(objects, "Service") if o["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_namespaced_peering_uses_a_kopfpeering_per_watched_namespace(all_objects):
    peerings = kinds(all_objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["prod", "research"]
    assert {p["metadata"]["name"] for p in peerings} == {"helixrun-peers"}
    for role in kinds(all_objects, "Role"):
        if role["metadata"]["name"].endswith("-operator"):
            assert grants([role])[("kopf.dev", "kopfpeerings")] == {"get", "list", "watch", "patch"}
    container = operator_container(all_objects)
    assert container["args"][:2] == ["--namespace=research", "--namespace=prod"]
    assert "--all-namespaces" not in container["args"]


def test_peering_crds_ship_with_the_chart():
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()) if d]
    names = {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert names == {("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")}
    for d in docs:
        assert d["spec"]["group"] == "kopf.dev"
        # kopf patches status through the main resource: a status subresource would drop its keep-alives.
        assert "subresources" not in d["spec"]["versions"][0]


def test_operator_env_carries_the_installation_settings(default_objects, all_objects):
    env = {e["name"]: e.get("value") for e in operator_container(default_objects)["env"]}
    assert env == {
        "HELIXRUN_POOLS_FILE": "/etc/helixrun/pools/pools.yaml",
        "HELIXRUN_BACKEND": "auto",
        "HELIXRUN_TRAINER_IMAGE": "ghcr.io/helixrun/trainer:0.1.0",
        "HELIXRUN_TRAINER_SERVICE_ACCOUNT": "helixrun-trainer",
        "HELIXRUN_MODEL_CACHE_SIZE": "200Gi",
        "HELIXRUN_OPERATOR_METRICS_PORT": "9090",
    }
    env = {e["name"]: e.get("value") for e in operator_container(all_objects)["env"]}
    assert env["HELIXRUN_TRAINER_IMAGE"] == "registry.example.com/helixrun/trainer:0.1.0-rc.1"
    assert env["HELIXRUN_MODEL_CACHE_STORAGE_CLASS"] == "fast-rwx"
    assert env["HELIXRUN_MODEL_CACHE_SIZE"] == "500Gi"
    assert env["HELIXRUN_OPERATOR_METRICS_PORT"] == "9091"
    assert env["HELIXRUN_OPERATOR_WORKERS"] == "16"
    assert env["HELIXRUN_BACKEND"] == "trainjob"


def test_operator_exposes_metrics_and_health(default_objects):
    container = operator_container(default_objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8080}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = one(default_objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(default_objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_pools_change_restarts_the_operator():
    a = one(helm.template(), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/pools"]
    pools = yaml.safe_load((REPO / "operator" / "helixrun" / "pools.yaml").read_text())[:1]
    b = one(helm.template({"pools": pools}), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert a != b["checksum/pools"]


# -- restricted Pod Security ------------------------------------------------


@pytest.mark.parametrize("name", ["default", "every option", "peering"])
def test_every_pod_template_is_restricted(name, default_objects, all_objects):
    objects = {"default": default_objects, "every option": all_objects,
               "peering": helm.template({"operator": {"replicas": 2}})}[name]
    specs = list(pod_specs(objects))
    assert specs, "no pod templates rendered"
    for owner, spec in specs:
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        mounts_tmp = False
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            cw = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, cw
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{cw}: numeric non-root runAsUser, got {uid!r}"
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", cw
            assert sc.get("allowPrivilegeEscalation") is False, cw
            assert sc.get("privileged") in (None, False), cw
            assert sc.get("readOnlyRootFilesystem") is True, cw
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cw
            assert not sc.get("capabilities", {}).get("add"), cw
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
        tmp = [v for v in spec.get("volumes", []) if v["name"] == "tmp"]
        assert mounts_tmp and tmp and "emptyDir" in tmp[0], f"{where}: a read-only root needs an emptyDir /tmp"


def test_service_account_tokens_mount_only_where_needed(default_objects):
    accounts = {o["metadata"]["name"]: o for o in kinds(default_objects, "ServiceAccount")}
    assert accounts["hx-helixrun-operator"]["automountServiceAccountToken"] is False
    assert one(default_objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # The trainer patches its run's status, so its pods need the token.
    assert accounts["helixrun-trainer"]["automountServiceAccountToken"] is True


# -- RBAC --------------------------------------------------------------------

OPERATOR_NAMESPACED = {
    ("helixrun.io", "trainingruns"): {"get", "list", "watch", "patch"},
    ("helixrun.io", "trainingruns/status"): {"get", "patch"},
    ("helixrun.io", "trainingruns/finalizers"): {"update"},
    ("", "configmaps"): {"create"},
    ("", "services"): {"create"},
    ("", "persistentvolumeclaims"): {"create"},
    ("", "serviceaccounts"): {"create"},
    ("rbac.authorization.k8s.io", "roles"): {"create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"create"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
JOB_KINDS = {
    "pytorchjob": {("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch", "delete"}},
    "trainjob": {("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "patch", "delete"},
                 ("trainer.kubeflow.org", "trainingruntimes"): {"get", "create", "patch"}},
}
JOB_KINDS["auto"] = JOB_KINDS["pytorchjob"] | JOB_KINDS["trainjob"]
OPERATOR_CLUSTER = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
TRAINER = {("helixrun.io", "trainingruns/status"): {"patch"}}


@pytest.mark.parametrize("name", ["default", "every option", "peering"])
def test_rbac_never_grants_wildcards(name, default_objects, all_objects):
    objects = {"default": default_objects, "every option": all_objects,
               "peering": helm.template({"operator": {"replicas": 2}})}[name]
    roles = [o for o in objects if o["kind"] in RBAC_KINDS]
    assert roles
    for role in roles:
        for groups, resources, verbs in rules_of(role):
            where = f"{role['kind']}/{role['metadata']['name']}: {groups} {resources} {verbs}"
            assert "*" not in verbs and "*" not in resources and "*" not in groups, where
            assert all("/" not in g for g in groups), f"{where}: apiGroups take group names, not versions"
            assert not {"escalate", "bind", "impersonate"} & set(verbs), where
        assert not role.get("aggregationRule"), role["metadata"]["name"]


def test_cluster_wide_operator_rbac_is_exactly_the_minimum(default_objects):
    assert grants(kinds(default_objects, "ClusterRole")) == {**OPERATOR_CLUSTER, **OPERATOR_NAMESPACED,
                                                              **JOB_KINDS["auto"]}
    binding = one(default_objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hx-helixrun-operator", "namespace": "helixrun-system"}]
    assert binding["roleRef"]["name"] == one(default_objects, "ClusterRole")["metadata"]["name"]


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_only_cluster_needs():
    objects = helm.template({"operator": {"watchNamespaces": ["research", "prod"]}})
    assert grants(kinds(objects, "ClusterRole")) == OPERATOR_CLUSTER
    operator_roles = [r for r in kinds(objects, "Role") if r["metadata"]["name"] == "hx-helixrun-operator"]
    assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["prod", "research"]
    for role in operator_roles:
        assert grants([role]) == {**OPERATOR_NAMESPACED, **JOB_KINDS["auto"]}
    bindings = [b for b in kinds(objects, "RoleBinding") if b["metadata"]["name"] == "hx-helixrun-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["prod", "research"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == "helixrun-system"


def test_trainer_may_only_patch_its_runs_status(default_objects, all_objects):
    (role,) = kinds(default_objects, "Role")
    assert grants([role]) == TRAINER
    trainer_roles = [r for r in kinds(all_objects, "Role") if r["metadata"]["name"] == "helixrun-trainer"]
    assert sorted(r["metadata"]["namespace"] for r in trainer_roles) == ["prod", "research", "scratch"]
    for r in trainer_roles:
        assert grants([r]) == TRAINER
    accounts = [a for a in kinds(all_objects, "ServiceAccount") if a["metadata"]["name"] == "helixrun-trainer"]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["prod", "research", "scratch"]


def test_the_chart_makes_the_trainers_account_as_the_operator_does(default_objects):
    """Where the chart made them first, the operator's create finds them (409) and adds nothing."""
    settings = RenderSettings.from_env({"HELIXRUN_TRAINER_SERVICE_ACCOUNT": "helixrun-trainer"})
    chart = {(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]): o for o in default_objects
             if o["kind"] in ("ServiceAccount", "Role", "RoleBinding") and o["metadata"]["name"] == "helixrun-trainer"}
    operator = {(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]): o
                for o in trainer_account("helixrun-system", settings)}
    assert chart.keys() == operator.keys()
    role = ("Role", "helixrun-trainer", "helixrun-system")
    binding = ("RoleBinding", "helixrun-trainer", "helixrun-system")
    assert chart[role]["rules"] == operator[role]["rules"]
    assert (chart[binding]["roleRef"], chart[binding]["subjects"]) == (operator[binding]["roleRef"], operator[binding]["subjects"])


def test_without_the_charts_rbac_the_operator_creates_no_trainer_account(default_objects):
    assert "HELIXRUN_CREATE_TRAINER_ACCOUNT" not in {e["name"] for e in operator_container(default_objects)["env"]}
    env = {e["name"]: e.get("value") for e in operator_container(helm.template({"rbac": {"create": False}}))["env"]}
    assert env["HELIXRUN_CREATE_TRAINER_ACCOUNT"] == "false"


def test_trainer_namespaces_default_to_the_watched_ones():
    objects = helm.template({"operator": {"watchNamespaces": ["lab"]}})
    account = next(a for a in kinds(objects, "ServiceAccount") if a["metadata"]["name"] == "helixrun-trainer")
    assert account["metadata"]["namespace"] == "lab"


def test_rbac_create_false_renders_no_accounts_or_roles():
    objects = helm.template({"rbac": {"create": False}})
    assert not {o["kind"] for o in objects} & {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


# -- pools and CRDs -----------------------------------------------------------


def test_rendered_pools_are_the_operators_default_pools(default_objects):
    """values.yaml's pools are generated from pools.yaml (test_generated.py); the ConfigMap carries them intact."""
    package_pools = yaml.safe_load((REPO / "operator" / "helixrun" / "pools.yaml").read_text())
    rendered = yaml.safe_load(one(default_objects, "ConfigMap")["data"]["pools.yaml"])
    assert rendered == package_pools


def test_rendered_pools_load_in_the_operator(all_objects):
    from helixrun.pools import parse_pools

    configmap = next(o for o in kinds(all_objects, "ConfigMap") if o["metadata"]["name"].endswith("-pools"))
    pools = parse_pools(configmap["data"]["pools.yaml"], "rendered pools.yaml")
    assert set(pools) == {"a800", "rtx4090"}
    assert pools["a800"].node_selector["example.com/rack"] == "r1"


def test_trainingrun_crd_in_the_chart_is_the_one_in_crds():
    chart_crd = CHART / "crds" / "helixrun.io_trainingruns.yaml"
    source = REPO / "crds" / "helixrun.io_trainingruns.yaml"
    assert chart_crd.read_bytes() == source.read_bytes(), (
        f"{chart_crd} drifted from {source}: cp {source.relative_to(REPO)} {chart_crd.relative_to(REPO)}"
    )


def test_crds_render_with_include_crds_and_are_never_templated(default_objects):
    rendered = helm.template(include_crds=True)
    crds = {o["metadata"]["name"] for o in kinds(rendered, "CustomResourceDefinition")}
    assert crds == {"trainingruns.helixrun.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    # Templated CRDs would be deleted by `helm uninstall` together with every TrainingRun.
    assert not kinds(default_objects, "CustomResourceDefinition")


# -- NOTES ---------------------------------------------------------------------


def test_notes_tell_the_user_what_to_do_next():
    text = helm.notes()
    for command in ("kubectl apply -n helixrun-system -f examples/run-genechat.yaml", "kubectl get tr",
                    "helixrun status", "rollout status deployment/hx-helixrun-operator"):
        assert command in text, f"NOTES.txt lacks {command!r}:\n{text}"
    text = helm.notes({"operator": {"replicas": 2, "watchNamespaces": ["lab"]}})
    assert "statefulset/hx-helixrun-operator" in text and "kubectl get tr -n lab" in text


def test_helm_missing_is_an_error_not_a_skip(monkeypatch):
    helm.helm_binary.cache_clear()
    monkeypatch.setenv("HELIXRUN_HELM", "/nonexistent/helm")
    try:
        with pytest.raises(HelmError):
            helm.helm_binary()
    finally:
        helm.helm_binary.cache_clear()


def test_kind_image_values_point_the_operator_at_the_loaded_image():
    from tests.images.build import chart_values

    objects = helm.template(chart_values({"operator": "ghcr.io/helixrun/operator:dev",
                                          "trainer": "ghcr.io/helixrun/trainer:dev"}))
    container = operator_container(objects)
    assert container["image"] == "ghcr.io/helixrun/operator:dev" and container["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HELIXRUN_TRAINER_IMAGE"] == "ghcr.io/helixrun/trainer:dev"


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob", "auto"])
def test_the_backend_value_reaches_the_operator_with_rbac_for_its_job_kind(backend):
    objects = helm.template({"backend": backend})
    assert grants(kinds(objects, "ClusterRole")) == {**OPERATOR_CLUSTER, **OPERATOR_NAMESPACED, **JOB_KINDS[backend]}
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "HELIXRUN_BACKEND", "value": backend} in container["env"]


def test_an_unknown_backend_is_refused_by_the_schema():
    with pytest.raises(helm.HelmError, match="backend"):
        helm.template({"backend": "mpijob"})
