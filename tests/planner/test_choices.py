"""The planner's choices: precision, ZeRO stage, checkpointing, checkpoints and grace periods, time and cost."""

from __future__ import annotations

import math

import pytest

from helixrun.planner import make_plan, timing
from helixrun.planner.models import lookup
from tests.planner.conftest import make_spec, run


def test_explicit_precision_is_honoured(pools):
    plan = make_plan(make_spec(run("esm2-mlm", "a800", training={"precision": "fp16"})), pools["a800"])
    assert plan.precision == "fp16" and any("GradScaler" in n for n in plan.notes)
    plan = make_plan(make_spec(run("esm2-mlm", "a800", training={"precision": "fp32"})), pools["a800"])
    assert plan.precision == "fp32" and plan.attention != "flash_attention_2", "FlashAttention-2 needs half precision"


def test_bf16_on_a_pool_without_it_is_refused(pools):
    plan = make_plan(make_spec(run("esm2-mlm", "rtx2080super", training={"precision": "bf16"})), pools["rtx2080super"])
    assert not plan.fits and "has no bf16" in plan.refusal
    assert plan.refusal.startswith("training.precision: bf16 ") and "set training.precision: fp16 or auto" in plan.refusal


def test_auto_precision_and_attention_follow_the_pool(pools):
    spec = make_spec(run("esm2-mlm", "a800", model={"name": "facebook/esm2_t6_8M_UR50D"}))
    a800 = make_plan(spec, pools["a800"])
    turing = make_plan(spec, pools["rtx2080super"])
    assert (a800.precision, a800.tf32, a800.attention) == ("bf16", True, "flash_attention_2")
    assert (turing.precision, turing.tf32, turing.attention) == ("fp16", False, "sdpa")


def test_large_full_runs_on_several_gpus_start_at_zero2(pools):
    """The ladder tries ZeRO-2 first for billion-parameter models; the faster setup that fits wins, ties to ZeRO-2."""
    from helixrun.planner.planner import Setup, _ladder

    assert _ladder("full", False, 2_800_000_000, 8)[0] == Setup("full", 2)
    spec = make_spec(run("esm2-mlm", "a800", model={"name": "facebook/esm2_t36_3B_UR50D"}, hardware={"gpusPerNode": 8}))
    plan = make_plan(spec, pools["a800"])
    # DDP fits at micro-batch 7 (one all-reduce per step) and beats ZeRO-2 at micro-batch 16 (collectives on each
    # of the micro-batches) by the planner's estimate.
    assert plan.fits and (plan.distributed, plan.zero_stage, plan.offload) == ("ddp", 0, False)
    assert any("chosen over full, ZeRO-2, which fits at micro-batch 16" in n for n in plan.notes)
    bigger = make_spec(run("metagene-classification", "a800", model={"method": "full"}, hardware={"gpusPerNode": 8}))
    plan = make_plan(bigger, pools["a800"])  # 7B: DDP's 16 B/param do not fit 80 GiB
    assert plan.fits and (plan.distributed, plan.zero_stage, plan.offload) == ("deepspeed", 2, False)
    assert any("FSDP2" in n for n in plan.notes), "the plan says how the trainer runs ZeRO-2"
    small = make_plan(make_spec(run("esm2-mlm", "a800", hardware={"gpusPerNode": 8})), pools["a800"])
    assert (small.distributed, small.zero_stage) == ("ddp", 0), "650M: DDP fits, ZeRO is not needed"


def test_checkpointing_only_when_needed(pools):
    at_512 = make_plan(make_spec(run("metagene-classification", "rtx4090")), pools["rtx4090"])
    assert at_512.fits and not at_512.gradient_checkpointing
    at_2048 = make_plan(make_spec(run("metagene-classification", "rtx4090", data={"maxSequenceLength": 2048})), pools["rtx4090"])
    assert at_2048.fits and at_2048.gradient_checkpointing
    assert any("gradient checkpointing on" in n for n in at_2048.notes)
    assert any("512 positions" in n for n in at_2048.notes), "METAGENE-1 was trained on 512 positions"


def test_big_checkpoints_are_saved_asynchronously_with_a_long_grace_period(pools):
    """METAGENE-1 full on A800s: fp32 weights + AdamW states (+ half weights under ZeRO) ≈ 90 GB: minutes to write.
    Two GPUs, because ZeRO-2's CPU offload needs ~145 GiB of host memory: two GPUs' share of an A800 node."""
    plan = make_plan(make_spec(run("metagene-classification", "a800", model={"method": "full"},
                                   hardware={"gpusPerNode": 2})), pools["a800"])
    assert plan.fits
    p = lookup("metagene-ai/METAGENE-1").params("cls:2")
    assert plan.checkpoint_bytes >= 12 * p
    save = plan.checkpoint_bytes / timing.CHECKPOINT_WRITE_BYTES_PER_S
    assert plan.async_checkpoint and save > 30
    assert plan.grace_period_seconds == math.ceil(plan.step_seconds + save * 1.5 + 15)
    assert any("30 s torchrun allows" in n for n in plan.notes)
    lora = make_plan(make_spec(run("metagene-classification", "a800")), pools["a800"])
    assert not lora.async_checkpoint and lora.grace_period_seconds == 60
    assert lora.checkpoint_bytes < 100e6, "adapters + their AdamW states only"


def test_grace_period_covers_the_step_in_flight_and_the_save(pools):
    """ESM-2 650M on a 4090: a step of minutes dwarfs the ~16 s save; SIGTERM waits for the step, then the save."""
    plan = make_plan(make_spec(run("esm2-mlm", "rtx4090")), pools["rtx4090"])
    save = plan.checkpoint_bytes / timing.CHECKPOINT_WRITE_BYTES_PER_S
    assert save < 30 and plan.step_seconds > 60
    assert plan.grace_period_seconds == math.ceil(plan.step_seconds + 1.5 * save + 15) > 60


def test_step_time_cost_and_eta_by_hand(pools):
    """ESM-2 8M on one H100, 32 samples x 512: 6N + attention FLOPs per token at 20 % MFU of 989 TFLOPS."""
    spec = make_spec(run("esm2-mlm", "h100", model={"name": "facebook/esm2_t6_8M_UR50D"},
                         training={"globalBatch": {"samples": 32}, "maxSteps": 1000}))
    plan = make_plan(spec, pools["h100"])
    arch = lookup("facebook/esm2_t6_8M_UR50D")
    n = arch.params("mlm")
    flops = 6 * n + 6 * 2 * arch.layers * arch.hidden * 512
    assert plan.flops_per_token == pytest.approx(flops)
    step = 32 * 512 * flops / (989e12 * 0.20)
    assert plan.step_seconds == pytest.approx(step)
    assert plan.total_seconds == pytest.approx(1000 * step)
    assert plan.cost_usd == pytest.approx(1000 * step / 3600 * 2.5)


def test_lora_flops_are_four_n(pools):
    plan = make_plan(make_spec(run("metagene-classification", "a800")), pools["a800"])
    arch = lookup("metagene-ai/METAGENE-1")
    n = arch.params("cls:2") - arch.vocab * arch.hidden
    attention = 2 * arch.layers * arch.hidden * 512 / 2
    assert plan.flops_per_token == pytest.approx(4 * n + 4 * attention)
    assert plan.mfu == 0.40


def test_pcie_pools_pay_for_gradient_sync(pools):
    two = make_plan(make_spec(run("esm2-mlm", "rtx4090", hardware={"gpusPerNode": 2})), pools["rtx4090"])
    sync = timing.sync_seconds_per_step(two.trainable_params, 2, 1, nvlink=False, zero=False)
    assert sync == pytest.approx(2 * 0.5 * two.trainable_params * 4 / 10e9)
    assert two.step_seconds > sync > 0


def test_refusals_name_only_pools_whose_nodes_hold_the_runs_gpus_per_node(pools):
    """8 GPUs per node asked: a 2-GPU node cannot host the run, however much memory its GPUs have."""
    a800 = pools["a800"]
    custom = {
        "small8": a800.model_copy(update={"name": "small8", "memory_gib": 8.0}),
        "big2": a800.model_copy(update={"name": "big2", "memory_gib": 400.0, "gpus_per_node": 2}),
        "big8": a800.model_copy(update={"name": "big8", "memory_gib": 400.0}),
    }
    spec = make_spec(run("metagene-classification", "small8", model={"method": "full"}, hardware={"gpusPerNode": 8}))
    plan = make_plan(spec, custom["small8"], custom)
    assert not plan.fits
    assert "use pool big8" in plan.refusal and "big2" not in plan.refusal, plan.refusal


def test_unknown_or_precompute_only_models_are_refused_not_raised(pools):
    plan = make_plan(make_spec(run("esm2-mlm", "a800", model={"name": "facebook/esm2_t99_1T_UR50D"})), pools["a800"])
    assert not plan.fits and "not in the planner's catalog" in plan.refusal
    plan = make_plan(make_spec(run("esm2-mlm", "a800", model={"name": "facebook/esmfold_v1"})), pools["a800"])
    assert not plan.fits and "precompute only" in plan.refusal
