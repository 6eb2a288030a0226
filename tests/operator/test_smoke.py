"""Smoke runs (spec.smokeTest): resolved and rendered for the recipe's tiny models, on the run's hardware."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from helixrun import api, smoke
from helixrun.pools import default_pools, parse_pools
from helixrun.recipes import RECIPES
from helixrun.render import MODEL_CACHE_CLAIM, RenderSettings, render_run
from helixrun.resolve import ResolvedRun, resolve

SETTINGS = RenderSettings(trainer_image="registry.example/trainer:test")

EXAMPLE = Path(__file__).parents[2] / "examples" / "run-esm2.yaml"


def smoke_object(**training) -> dict:
    """The ESM-2 pretraining example (500k steps, data on a claim) made a smoke run on 2 nodes x 1 GPU."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"] = {"name": "esm2-smoke", "namespace": "bio"}
    obj["spec"].update(smokeTest=True, hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 1})
    if "maxSteps" in training:
        obj["spec"]["training"].pop("epochs", None)
    obj["spec"]["training"].update(training)
    return obj


# A test node whose "GPUs" are CPUs: little memory, no bf16, no tensor cores to speak of.
CPU_POOL = {"name": "local", "gpuProduct": "cpu", "memoryGiB": 2, "gpusPerNode": 2, "bf16": False, "tf32": False,
            "flashAttention2": False, "nvlink": False, "peakTFLOPS": 0.1, "cpuPerGPU": "500m", "memoryPerGPU": "2Gi"}


def smoke_run(**training) -> api.TrainingRun:
    return api.TrainingRun.from_object(smoke_object(**training))


def test_a_smoke_run_keeps_its_hardware_and_takes_the_smoke_budget():
    resolved = resolve(smoke_run(), default_pools())
    spec = resolved.spec
    assert resolved.smoke_test and spec["smokeTest"] is True
    assert spec["hardware"] == {"pool": "rtx4090", "nodes": 2, "gpusPerNode": 1}
    assert spec["training"]["maxSteps"] == smoke.MAX_STEPS == 200
    assert spec["checkpointing"]["everySteps"] == smoke.CHECKPOINT_EVERY == 20
    assert spec["evaluation"]["everySteps"] == smoke.EVALUATION_EVERY == 50
    assert spec["data"]["maxSequenceLength"] == 64 and spec["training"]["globalBatch"] == {"tokens": 256}
    assert spec["checkpointing"]["keepLast"] == 5, "what the smoke budget does not name stays the run's"
    assert resolved.paths.data == smoke.POD_DATA, "generated data goes where a pod can write"


def test_the_smoke_budget_is_a_cap_a_run_asking_for_less_keeps_its_own():
    assert resolve(smoke_run(maxSteps=60), default_pools()).spec["training"]["maxSteps"] == 60
    obj = smoke_object()
    obj["spec"]["checkpointing"]["everySteps"] = 10
    obj["spec"]["training"].pop("maxSteps", None)
    obj["spec"]["training"]["epochs"] = 2
    spec = resolve(api.TrainingRun.from_object(obj), default_pools()).spec
    assert spec["training"]["maxSteps"] == 200 and "epochs" not in spec["training"], "epochs of generated data"
    assert spec["checkpointing"]["everySteps"] == 10


def test_a_smoke_run_is_planned_for_the_tiny_model_as_ddp_over_its_ranks():
    plan = resolve(smoke_run(), default_pools()).plan
    assert plan.fits and (plan.world_size, plan.distributed, plan.method) == (2, "ddp", "full")
    assert plan.total_params < 100_000, "planned for the 650M model, not the tiny one"
    assert plan.memory.total < 2


@pytest.mark.parametrize("pool", [*sorted(default_pools()), "local"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipes_smoke_run_fits_every_pool_including_a_cpu_node(recipe, pool):
    pools = {**default_pools(), **parse_pools(yaml.safe_dump([CPU_POOL]), "test pools")}
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "s"},
           "spec": {"recipe": recipe, "smokeTest": True, "hardware": {"pool": pool, "nodes": 2},
                    "training": {"maxSteps": 100000, "precision": "bf16"}}}
    plan = resolve(api.TrainingRun.from_object(obj), pools).plan
    assert plan.fits, plan.refusal


def test_the_rendered_smoke_job_has_two_ranks_needs_no_data_or_model_cache_and_records_the_smoke_run():
    resolved = resolve(smoke_run(), default_pools())
    objects = render_run(resolved, SETTINGS)
    assert not any(o["metadata"]["name"] == MODEL_CACHE_CLAIM for o in objects), "a smoke run downloads nothing"
    job = next(o for o in objects if o["kind"] == "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {k: r["replicas"] for k, r in replicas.items()} == {"Master": 1, "Worker": 1}
    assert job["spec"]["nprocPerNode"] == "1"
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"esm2-smoke-checkpoints"}, "no data claim, no model cache claim"
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts and "/cache" in mounts
        assert pod["containers"][0]["command"] == ["helixrun-launch", "--config", "/etc/helixrun/config.yaml"]
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    assert ResolvedRun.from_yaml(config) == resolved and ResolvedRun.from_yaml(config).smoke_test


def test_a_run_without_smoke_test_is_untouched():
    obj = smoke_object()
    del obj["spec"]["smokeTest"]
    resolved = resolve(api.TrainingRun.from_object(obj), default_pools())
    assert not resolved.smoke_test and resolved.spec["training"]["globalBatch"] == {"tokens": 2000000}
    assert resolved.paths.data == "/data"


def test_smoke_spec_never_changes_what_it_is_given():
    spec = smoke_object()["spec"]
    before = copy.deepcopy(spec)
    smoke.smoke_spec(spec)
    assert spec == before


def test_overrides_win_over_the_smoke_budget():
    resolved = resolve(smoke_run(), default_pools(), overrides=["training.maxSteps=7", "checkpointing.everySteps=3"])
    assert (resolved.spec["training"]["maxSteps"], resolved.spec["checkpointing"]["everySteps"]) == (7, 3)


def test_the_planners_tiny_esm2_is_the_model_the_trainer_builds():
    """The smoke plan's parameter count equals the trainer's tiny ESM-2, exactly."""
    from helixrun_trainer.recipes import get_recipe

    resolved = resolve(smoke_run(), default_pools())
    model = get_recipe("esm2-mlm").build_model(resolved, True)
    assert resolved.plan.total_params == sum(p.numel() for p in model.parameters())
