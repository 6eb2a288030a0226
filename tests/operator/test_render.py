"""Rendering: (resolved run, settings) -> the objects the operator creates."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helixrun import api
from helixrun.children import KUEUE_QUEUE_LABEL
from helixrun.pools import default_pools
from helixrun.render import (
    MODEL_CACHE_CLAIM,
    PlanRefused,
    RenderSettings,
    render_run,
)
from helixrun.resolve import ResolvedRun, resolve

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("run-*.yaml"))
SETTINGS = RenderSettings(trainer_image="registry.example/trainer:test")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def make_run(pool="a800", nodes=1, gpus=1, uid="", labels=None, **spec) -> ResolvedRun:
    obj = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "esm", "namespace": "bio", "uid": uid, "labels": labels or {}},
        "spec": {
            "recipe": "esm2-mlm",
            "hardware": {"pool": pool, "nodes": nodes, "gpusPerNode": gpus},
            "training": {"maxSteps": 100},
            **spec,
        },
    }
    return resolve(api.TrainingRun.from_object(obj), default_pools())


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"] + ("/cache" if o["metadata"]["name"] == MODEL_CACHE_CLAIM else ""): o for o in objects}


def pod_specs(job: dict) -> list[dict]:
    return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_render_job_pvc_configmap_and_service(path):
    (run,) = api.load_runs(path.read_text(), str(path))
    resolved = resolve(run, default_pools())
    objects = by_kind(render_run(resolved, SETTINGS))
    assert set(objects) == {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim/cache", "ConfigMap",
                            "PersistentVolumeClaim", "Service", "PyTorchJob"}
    job = objects["PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1" and DNS_1035.match(job["metadata"]["name"])
    pool = resolved.pool
    for spec in pod_specs(job):
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == pool.gpu_product
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        (container,) = spec["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == run.spec.hardware.gpus_per_node
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert {objects["PersistentVolumeClaim"]["metadata"]["name"], MODEL_CACHE_CLAIM} <= claims
        assert any(v.get("configMap", {}).get("name") == objects["ConfigMap"]["metadata"]["name"] for v in spec["volumes"])
    assert ResolvedRun.from_yaml(objects["ConfigMap"]["data"]["config.yaml"]) == resolved


@pytest.mark.parametrize("pool", sorted(default_pools()))
def test_every_pool_places_pods_on_its_gpus(pool):
    gpus = default_pools()[pool].gpus_per_node
    # the smallest ESM-2, which fits every pool (a 3 GiB CPU share of `local` included): placement is under test
    small = {"name": "facebook/esm2_t6_8M_UR50D", "init": "scratch", "method": "full"}
    job = by_kind(render_run(make_run(pool=pool, gpus=gpus, model=small), SETTINGS))["PyTorchJob"]
    assert job["spec"]["nprocPerNode"] == str(gpus)
    (spec,) = pod_specs(job)
    assert spec["nodeSelector"] == default_pools()[pool].node_selector
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus


def test_single_node_run_has_only_a_master():
    job = by_kind(render_run(make_run(), SETTINGS))["PyTorchJob"]
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    assert master["replicas"] == 1 and master["restartPolicy"] == "ExitCode"


def test_multi_node_run_adds_workers_and_shares_the_checkpoint_volume():
    objects = by_kind(render_run(make_run(nodes=3, gpus=8), SETTINGS))
    replicas = objects["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert replicas["Worker"]["template"] == replicas["Master"]["template"]
    assert replicas["Worker"]["template"] is not replicas["Master"]["template"]
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_children_are_owned_by_the_run_and_retention_decides_the_pvc():
    kept = by_kind(render_run(make_run(uid="u-1", checkpointing={"retention": "Retain"}), SETTINGS))
    deleted = by_kind(render_run(make_run(uid="u-1", checkpointing={"retention": "Delete"}), SETTINGS))
    for kind in ("ConfigMap", "Service", "PyTorchJob"):
        (owner,) = kept[kind]["metadata"]["ownerReferences"]
        assert owner["uid"] == "u-1" and owner["controller"] is True
    assert "ownerReferences" not in kept["PersistentVolumeClaim"]["metadata"]
    assert deleted["PersistentVolumeClaim"]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert "ownerReferences" not in kept["PersistentVolumeClaim/cache"]["metadata"]


def test_the_trainers_account_may_only_patch_run_status_and_outlives_the_run():
    objects = render_run(make_run(uid="u-1"), SETTINGS)
    kinds = [o["kind"] for o in objects]
    assert kinds.index("RoleBinding") < kinds.index("PyTorchJob"), "the account exists before the job's pods"
    account, role, binding = (next(o for o in objects if o["kind"] == k) for k in ("ServiceAccount", "Role", "RoleBinding"))
    pod_account = pod_specs(by_kind(objects)["PyTorchJob"])[0]["serviceAccountName"]
    for obj in (account, role, binding):
        assert obj["metadata"]["name"] == pod_account == SETTINGS.trainer_service_account
        assert obj["metadata"]["namespace"] == "bio"
        assert "ownerReferences" not in obj["metadata"], "shared by the namespace's runs: never deleted with one"
    assert role["rules"] == [{"apiGroups": ["helixrun.io"], "resources": ["trainingruns/status"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "bio"}]


def test_where_a_platform_team_manages_rbac_no_account_is_rendered():
    settings = RenderSettings.from_env({"HELIXRUN_CREATE_TRAINER_ACCOUNT": "false"})
    kinds = {o["kind"] for o in render_run(make_run(), settings)}
    assert not kinds & {"ServiceAccount", "Role", "RoleBinding"} and "PyTorchJob" in kinds
    with pytest.raises(ValueError, match="HELIXRUN_CREATE_TRAINER_ACCOUNT must be true or false, got 'no'"):
        RenderSettings.from_env({"HELIXRUN_CREATE_TRAINER_ACCOUNT": "no"})


def test_user_env_is_kept_and_ours_added_only_where_unset():
    env = [{"name": "HF_HOME", "value": "/elsewhere"}, {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}]
    job = by_kind(render_run(make_run(env=env), SETTINGS))["PyTorchJob"]
    names = [e["name"] for e in pod_specs(job)[0]["containers"][0]["env"]]
    assert names.count("HF_HOME") == 1 and "HF_TOKEN" in names and "PYTORCH_CUDA_ALLOC_CONF" in names
    assert pod_specs(job)[0]["containers"][0]["env"][0] == env[0]


def test_kueue_queue_label_passes_through_to_the_job():
    job = by_kind(render_run(make_run(labels={KUEUE_QUEUE_LABEL: "gpu-queue"}), SETTINGS))["PyTorchJob"]
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"


def test_suspend_and_backoff_reach_the_run_policy():
    job = by_kind(render_run(make_run(suspend=True, backoffLimit=3), SETTINGS))["PyTorchJob"]
    assert job["spec"]["runPolicy"]["suspend"] is True and job["spec"]["runPolicy"]["backoffLimit"] == 3


def test_pods_run_restricted():
    for spec in pod_specs(by_kind(render_run(make_run(), SETTINGS))["PyTorchJob"]):
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        ctx = spec["containers"][0]["securityContext"]
        assert ctx == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def test_grace_period_comes_from_the_plan():
    run = make_run()
    run = run.model_copy(update={"plan": run.plan.model_copy(update={"grace_period_seconds": 420})})
    (spec,) = pod_specs(by_kind(render_run(run, SETTINGS))["PyTorchJob"])
    assert spec["terminationGracePeriodSeconds"] == 420


def test_a_refused_plan_renders_nothing():
    run = make_run()
    run = run.model_copy(update={"plan": run.plan.model_copy(update={"fits": False, "refusal": "needs 99 GiB"})})
    with pytest.raises(PlanRefused, match="needs 99 GiB"):
        render_run(run, SETTINGS)


def helixrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helixrun.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_render_prints_the_same_objects(tmp_path):
    path = EXAMPLES[0]
    result = helixrun("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    (run,) = api.load_runs(path.read_text(), str(path))
    expected = render_run(resolve(run, default_pools()), RenderSettings.from_env())
    assert list(yaml.safe_load_all(result.stdout)) == expected


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"hardware": {"pool": "v100"}}, "spec.hardware.pool"),
        ({"hardware": {"pool": "rtx4090", "gpusPerNode": 4}}, "spec.hardware.gpusPerNode"),
        ({"training": {"maxSteps": 5, "optimizer": {"lr": -1}}}, "spec.training.optimizer.lr"),
        ({"recipe": "alphafold"}, "spec.recipe"),
        ({"env": [{"name": "WANDB_API_KEY", "value": "k"}]}, "spec.env"),
    ],
)
def test_cli_render_refuses_invalid_runs_naming_the_field(tmp_path, edit, field):
    spec = {"recipe": "esm2-mlm", "hardware": {"pool": "a800"}, "training": {"maxSteps": 5}, **edit}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "x"}, "spec": spec}))
    result = helixrun("render", "-f", str(path))
    assert result.returncode == 2 and field in result.stderr and str(path) in result.stderr
    assert result.stdout == ""


def test_cli_render_reads_a_pools_file(tmp_path):
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump([{
        "name": "v100", "gpuProduct": "Tesla-V100-SXM2-32GB", "memoryGiB": 32, "gpusPerNode": 8, "bf16": False,
        "tf32": False, "flashAttention2": False, "nvlink": True, "peakTFLOPS": 125,
    }]))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "x"},
                                   "spec": {"recipe": "esm2-mlm", "hardware": {"pool": "v100"}, "training": {"maxSteps": 5},
                                            "model": {"name": "facebook/esm2_t6_8M_UR50D"}}}))
    result = helixrun("render", "-f", str(run), "--pools", str(pools))
    assert result.returncode == 0, result.stderr
    job = [o for o in yaml.safe_load_all(result.stdout) if o["kind"] == "PyTorchJob"][0]
    assert pod_specs(job)[0]["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}


def test_cli_render_applies_set_overrides_as_helixrun_train_does():
    path = EXAMPLES[0]
    result = helixrun("render", "-f", str(path), "--set", "hardware.nodes=2", "--set", "training.maxSteps=7")
    assert result.returncode == 0, result.stderr
    obj = yaml.safe_load(path.read_text())
    obj["spec"] |= {"hardware": {**obj["spec"]["hardware"], "nodes": 2}, "training": {**obj["spec"].get("training", {}), "maxSteps": 7}}
    expected = render_run(resolve(api.TrainingRun.from_object(obj), default_pools()), RenderSettings.from_env())
    assert list(yaml.safe_load_all(result.stdout)) == expected
    bad = helixrun("render", "-f", str(path), "--set", "hardware.nodes")
    assert bad.returncode == 2 and "--set" in bad.stderr and "path=value" in bad.stderr and bad.stdout == ""


def test_cli_render_renders_the_backend_asked_for():
    path = EXAMPLES[0]
    result = helixrun("render", "-f", str(path), "--backend", "trainjob")
    assert result.returncode == 0, result.stderr
    (run,) = api.load_runs(path.read_text(), str(path))
    expected = render_run(resolve(run, default_pools()), RenderSettings(backend="trainjob"))
    assert list(yaml.safe_load_all(result.stdout)) == expected
    assert [o["kind"] for o in expected][-2:] == ["TrainingRuntime", "TrainJob"]


def test_cli_version_names_the_package_version():
    result = helixrun("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"helixrun {importlib.metadata.version('helixrun')}"
