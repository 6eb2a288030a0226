"""CPU offload may use the host memory a run's pods request: memoryPerGPU of the run, else of its pool."""

from __future__ import annotations

from pathlib import Path

import yaml

from helixrun import api
from helixrun.cli.plan import merged_spec
from helixrun.planner import make_plan
from helixrun.pools import default_pools

SEED = Path(__file__).parent / "runs" / "esm2-650m-rtx2080super.yaml"


def plan_with(pool_memory: str, run_memory: str | None = None):
    """ESM-2 650M on an 8 GiB card: it fits only with ZeRO-2 CPU offload (~15 GiB of host memory)."""
    pool = default_pools()["rtx2080super"].model_copy(update={"memory_per_gpu": pool_memory})
    obj = yaml.safe_load(SEED.read_text())
    if run_memory:
        obj["spec"]["hardware"]["memoryPerGPU"] = run_memory
    spec = merged_spec(api.TrainingRun.from_object(obj))
    return make_plan(spec, pool)


def test_offload_is_planned_when_the_pools_host_memory_holds_it():
    plan = plan_with("32Gi")
    assert plan.fits and plan.offload and plan.host_memory_gib == 32


def test_offload_is_ruled_out_by_a_pool_with_less_host_memory_and_the_refusal_says_so():
    plan = plan_with("8Gi")
    assert not plan.fits and plan.host_memory_gib == 8
    assert any("more than the 8 GiB its pods take (8 GiB memoryPerGPU x 1 GPUs)" in n for n in plan.notes), plan.notes
    assert "ZeRO-2 CPU offload was not tried" in plan.refusal and "spec.hardware.memoryPerGPU" in plan.refusal


def test_a_runs_memory_per_gpu_overrides_its_pools_for_offload():
    plan = plan_with("8Gi", run_memory="16Gi")
    assert plan.fits and plan.offload and plan.host_memory_gib == 16
