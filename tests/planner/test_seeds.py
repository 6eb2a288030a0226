"""The seeds' cases (shared/seeds/): what users hit by hand, decided by the planner before a pod starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixrun import api
from helixrun.cli.plan import merged_spec
from helixrun.planner import make_plan

RUNS = Path(__file__).parent / "runs"
GB_PER_GIB = 1024**3 / 1e9


def plan_of(name: str, pools, pool: str | None = None):
    (training_run,) = api.load_runs((RUNS / name).read_text(), name)
    spec = merged_spec(training_run, name)
    return make_plan(spec, pools[pool or spec.hardware.pool], pools)


def test_metagene_full_finetune_is_refused_on_rtx4090_with_ways_out(pools):
    """metagene-classification-report.md: 7B full fine-tune OOMs on a 24 GB 4090 even at batch 1."""
    plan = plan_of("metagene-full-rtx4090.yaml", pools)
    assert not plan.fits
    assert plan.memory.total > 100, "AMP full training of 6.5 B params: 16 B/param of model states alone"
    r = plan.refusal
    assert "METAGENE-1 7B" in r and "full" in r and "seq 512" in r and "rtx4090 has 24 GiB" in r
    assert "use method lora (~14." in r, r
    assert "qlora" in r and "(~4." in r, r
    # On one GPU no pool's host share holds the ~145 GiB ZeRO-2 offload needs: the refusal says what would.
    assert "raise spec.hardware.memoryPerGPU" in r, "the host memory that would let offload fit is named"
    assert any("host memory" in n for n in plan.notes), "CPU offload is ruled out by host memory, and the plan says so"
    assert "ZeRO-2 CPU offload was not tried" in r


def test_metagene_lora_on_rtx4090_at_seq_512(pools):
    """What the planner chooses for the report's failing case once weights load in bf16."""
    plan = plan_of("metagene-lora-rtx4090.yaml", pools)
    assert plan.fits and plan.method == "lora"
    assert (plan.precision, plan.attention, plan.load_dtype) == ("bf16", "flash_attention_2", "bf16")
    assert (plan.micro_batch, plan.grad_accum, plan.gradient_checkpointing) == (2, 16, False)
    assert 19 < plan.memory.total < plan.memory_limit_gib
    assert plan.memory.weights == pytest.approx(12.08, abs=0.01)
    assert any("fp32 (25.9 GB)" in n and "torch.bfloat16" in n for n in plan.notes), "the fp32-on-the-Hub warning"


def test_metagene_lora_refused_without_qlora_on_10gib_but_switched_when_allowed(pools):
    plan = plan_of("metagene-lora-rtx4090.yaml", pools, pool="rtx3080")
    assert not plan.fits and "allowQLoRA" in plan.refusal and "rtx4090" in plan.refusal
    (training_run,) = api.load_runs((RUNS / "metagene-lora-rtx4090.yaml").read_text())
    spec = merged_spec(training_run)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"allow_qlora": True})})
    plan = make_plan(spec, pools["rtx3080"])
    assert plan.fits and plan.method == "qlora" and plan.load_dtype == "nf4"
    assert any("switched lora -> qlora" in n for n in plan.notes)


def test_esm2_650m_on_rtx2080super_uses_fp16_offload_and_reaches_2m_tokens(pools):
    """esm2ae-hardware-configs.md: 2080 Super, fp16, ZeRO-2 with CPU offload, 6 x 651 x 512 = 1,999,872 tokens."""
    plan = plan_of("esm2-650m-rtx2080super.yaml", pools)
    assert plan.fits and plan.method == "full"
    assert plan.precision == "fp16" and not plan.tf32 and plan.attention == "sdpa"
    assert (plan.distributed, plan.zero_stage, plan.offload) == ("deepspeed", 2, True)
    assert plan.effective_global_batch >= 2_000_000
    assert plan.effective_global_batch - 2_000_000 < plan.micro_batch * 512, "overshoot below one micro-batch"
    seed = 6 * 651 * 512
    assert abs(plan.effective_global_batch - seed) / seed < 0.004
    # ZeRO-2 as the trainer runs it (FSDP2, AMP): 6 B/param stay on the GPU (gathered fp32 weights + autocast
    # copies) where the seed's DeepSpeed fp16 engine keeps 2 B/param: micro-batch 2 without checkpointing, not
    # the seed's 6. With checkpointing micro-batch 20 fits: 196 micro-batches, not 1954, each moving fp32 weights
    # and gradients over PCIe, outweigh the recompute, so checkpointing is on: 20 x 196 x 512 = 2,007,040.
    assert plan.gradient_checkpointing
    assert (plan.micro_batch, plan.grad_accum) == (20, 196)
    assert plan.memory.total < plan.memory_limit_gib < 8
    assert any("GradScaler" in n for n in plan.notes)
    p, compute = plan.trainable_params, plan.mfu * pools["rtx2080super"].peak_tflops * 1e12
    step = 20 * 196 * 512 * plan.flops_per_token / compute + p / 5e8 + 196 * 2 * 4 * p / 12e9
    assert plan.step_seconds == pytest.approx(step)
    without = 2 * 1954 * 512 * plan.flops_per_token * 6 / 8 / compute + p / 5e8 + 1954 * 2 * 4 * p / 12e9
    assert without > 1.5 * step, "no recompute (6N, not 8N) but ten times the PCIe traffic"
    assert any("chosen over full, ZeRO-2 + CPU offload, which fits at micro-batch 2" in n for n in plan.notes)


def test_esm2_650m_without_offload_does_not_fit_8gib(pools):
    """The seed's offload is needed: AMP full training holds 16 B/param (10.4 GB) + autocast copies."""
    from helixrun.planner.planner import Setup, _context, compose, estimate

    (training_run,) = api.load_runs((RUNS / "esm2-650m-rtx2080super.yaml").read_text())
    spec = merged_spec(training_run)
    ctx = _context(spec, pools["rtx2080super"], compose(spec), "fp16")
    assert estimate(ctx, Setup("full", checkpointing=True), 1).total > 8


def test_genechat_fits_a800_with_lora_near_the_guides_65_to_75_gb(pools):
    """genechat2-a800-training-guide.md: "expect 65–75 GB of 80". The planner picks micro-batch 4 (the global batch
    of 4 in one step): 62.6 GiB = 67 GB, inside the guide's range. Weights are 24.5 GiB (Vicuna fp16 + DNABERT-2);
    the rest is activations of 889-token samples (313 gene windows + 512 text + prompt) and the 32k-vocab fp32 logits."""
    plan = plan_of("genechat-a800.yaml", pools)
    assert plan.fits and plan.method == "lora" and plan.precision == "bf16"
    assert (plan.micro_batch, plan.grad_accum) == (4, 1)
    assert 65 <= plan.memory.total * GB_PER_GIB <= 75
    assert plan.memory.weights == pytest.approx(24.5, abs=0.1)
    assert plan.trainable_params == 40 * 2 * 8 * 10240, "LoRA q,v r 8; the adapter is frozen as the released configs"
    assert plan.checkpoint_bytes < 0.2e9, "adapters + optimizer, not the guide's 27 GB full-model checkpoints"
    # 170k optimizer steps of 4 samples; the guide's 170k iterations are single samples (accum 4): a quarter.
    hours_for_guide = plan.total_seconds / 4 / 3600
    assert 15 < hours_for_guide < 30, "the guide expects 18–24 h"
