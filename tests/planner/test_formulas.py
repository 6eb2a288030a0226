"""The formulas pinned against hand-computed cases and the reference's figures (workloads.md §3, §10, §11)."""

from __future__ import annotations

import math

import pytest

from helixrun.planner import memory as mem
from helixrun.planner import notes, planner, timing
from helixrun.planner.models import lookup

METAGENE = lookup("metagene-ai/METAGENE-1")
VICUNA = lookup("lmsys/vicuna-13b-v1.5")
ESM650 = lookup("facebook/esm2_t33_650M_UR50D")
GB = 1e9


def test_metagene_weights_by_dtype():
    """workloads.md §10 (derived): bf16 12.97 GB, fp32 25.9 GB (> 24 GB), NF4 + double quant ≈ 3.34 GB."""
    params = METAGENE.params("lm")
    assert params * 2 / GB == pytest.approx(12.97, abs=0.01)
    assert params * 4 / GB == pytest.approx(25.94, abs=0.01)
    assert mem.quantized_weight_bytes(METAGENE, "lm") / GB == pytest.approx(3.36, abs=0.03)
    # by hand: 32 layers x (4·4096² + 3·4096·11008) linears at 4.127 bits + the rest in bf16
    linears = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert mem.quantized_weight_bytes(METAGENE, "lm") == linears * 4.127 / 8 + (params - linears) * 2


def test_lora_parameter_count_by_hand():
    """r·(in + out) per targeted linear per layer: METAGENE q,v r 8 = 4.19 M (§10 says 4.2 M); Vicuna q,v r 8 = 6.55 M."""
    assert METAGENE.lora_params(8, ("q_proj", "v_proj")) == (32 * 2 * 8 * (4096 + 4096), 32 * 4)
    assert METAGENE.lora_params(8, ("q_proj", "v_proj"))[0] == 4_194_304
    assert VICUNA.lora_params(8, ("q_proj", "v_proj"))[0] == 40 * 2 * 8 * 10240


def test_adamw_state_bytes_by_hand():
    assert mem.trainable_state_bytes(1000, 3) == (4000, 4000, 8000 + 12)


def test_zero2_formula_matches_reference_esm2_on_8_gpus():
    """§10: DeepSpeed ZeRO-2, ESM-2 650M on 8 GPUs: 2P + 18P/N = 2.77 GB per GPU."""
    p = ESM650.params("mlm")
    assert mem.zero2_gpu_bytes(p, 8, offload=False) / GB == pytest.approx(2.77, abs=0.01)
    assert mem.zero2_gpu_bytes(p, 8, offload=True) == 2 * p
    assert mem.zero2_host_bytes(p, 1) == p * 16 * 1.5


def test_deepspeed_all_live_counts_frozen_parameters():
    """`estimate_zero2_model_states_mem_needs_all_live` counts every parameter: for METAGENE LoRA it reports
    2P + 18P = 130 GB on one GPU, where the frozen bf16 base + fp32 adapters with AdamW hold ~13 GB."""
    p = METAGENE.params("cls:2")
    deepspeed = mem.deepspeed_all_live_estimate(p, world=1)
    lora_p, lora_t = METAGENE.lora_params(8, ("q_proj", "v_proj"))
    ours = p * mem.HALF + sum(mem.trainable_state_bytes(lora_p, lora_t))
    assert deepspeed / GB == pytest.approx(129.6, abs=0.2)
    assert ours / GB == pytest.approx(13.03, abs=0.02)
    assert deepspeed / ours > 9, "DeepSpeed's all-live estimate overstates LoRA by an order of magnitude"


def test_accelerate_estimate_has_no_activations_or_lora():
    """`accelerate estimate-memory`: fp32 model 25.9 GB, Adam 4x = 103.8 GB, whatever the method or sequence."""
    est = mem.accelerate_estimate(METAGENE.params("lm"))
    assert est["training_adam"] / GB == pytest.approx(103.8, abs=0.1)
    # The same number for LoRA and for any batch: what the planner adds is activations (GiB at seq 512):
    from helixrun.planner.models import Component

    act = mem.activation_bytes(Component(METAGENE, "lora", "cls:2", 512), 1, "flash_attention_2", False,
                               lora_targets=("q_proj", "v_proj"), lora_dropout=0.05, lora_r=8)
    assert 2.0 < act / GB < 3.5, "activations of one 512-token sequence through a LoRA METAGENE-1 (§10: ≈2.3 GB SDPA)"


def test_llama_layer_activation_by_hand():
    """Full training, flash attention: 34h + 8·ffn + 4·heads + 40 bytes per token per layer."""
    got = mem.layer_activation_bytes(METAGENE, "train", "flash_attention_2", 512)
    assert got == 34 * 4096 + 8 * 11008 + 4 * 32 + 40
    eager = mem.layer_activation_bytes(METAGENE, "train", "eager", 512)
    assert eager - got == 6 * 32 * 512, "eager attention adds the softmax probabilities: 6 bytes per head per key"


def test_checkpointing_keeps_one_residual_per_layer():
    from helixrun.planner.models import Component

    c = Component(METAGENE, "train", "cls:2", 512)
    no = mem.activation_bytes(c, 1, "sdpa", False)
    yes = mem.activation_bytes(c, 1, "sdpa", True)
    layer = mem.layer_activation_bytes(METAGENE, "train", "sdpa", 512)
    # without: 32 layers' activations; with: each layer's fp32 residual input (AMP) + one layer recomputed
    assert no - yes == 512 * (32 * layer - (32 * 4 * 4096 + layer))
    assert yes < no / 5


def test_fp32_logits_term_scales_with_vocab():
    """HF computes the loss on fp32 logits: b·s·V·4 bytes saved (+ the gradient at the peak): big for Vicuna's 32k vocab."""
    assert mem.outer_activation_bytes(VICUNA, "lm", "bf16") - mem.outer_activation_bytes(VICUNA, "none", "bf16") == 12 * 32000
    assert mem.outer_activation_bytes(METAGENE, "lm", "bf16") - mem.outer_activation_bytes(METAGENE, "none", "bf16") == 12 * 1024


def test_flops_per_token():
    """6N full, 4N frozen base, +2N with checkpointing; attention 2·L·h·s per pass (half when causal)."""
    n, layers, h, s = 1_000_000, 2, 64, 100
    attention = 2 * layers * h * s
    assert timing.training_flops_per_token(n, layers, h, s, frozen_base=False, checkpointing=False, causal=False) == 6 * n + 6 * attention
    assert timing.training_flops_per_token(n, layers, h, s, frozen_base=True, checkpointing=False, causal=True) == 4 * n + 4 * attention / 2
    assert timing.training_flops_per_token(n, layers, h, s, frozen_base=True, checkpointing=True, causal=False) == 6 * n + 6 * attention


def test_zero_sync_moves_weights_and_gradients_every_micro_batch():
    """ZeRO-2: all-gather + reduce-scatter per micro-batch, (N-1)/N x 4 B/param each; DDP: one all-reduce per step."""
    p = 1_000_000_000
    # 4 ranks over NVLink, accumulation 3: 3/4 x 4 B x 1e9 x 2 x 3 = 18 GB at 150 GB/s = 0.12 s
    assert timing.sync_seconds_per_step(p, 4, 1, nvlink=True, zero=True, grad_accum=3) == pytest.approx(0.12)
    # 2 nodes of 4: inter-node 12.5 GB/s bounds it; 7/8 x 4 x 1e9 x 2 x 5 = 35 GB -> 2.8 s
    assert timing.sync_seconds_per_step(p, 8, 2, nvlink=True, zero=True, grad_accum=5) == pytest.approx(2.8)
    # DDP does not depend on accumulation: 2 x 3/4 x 4 x 1e9 = 6 GB at 150 GB/s = 0.04 s
    assert timing.sync_seconds_per_step(p, 4, 1, nvlink=True, zero=False, grad_accum=3) == pytest.approx(0.04)
    assert timing.sync_seconds_per_step(p, 1, 1, nvlink=True, zero=True, grad_accum=3) == 0.0


def test_grace_period_and_save_time():
    assert timing.grace_period_seconds(0.0, 0.0) == 60
    assert timing.checkpoint_save_seconds(10 * 500_000_000) == 10
    assert timing.grace_period_seconds(100, 0.0) == 165
    # the step in flight finishes before the save: ESM-2 650M on a 4090, 73 s step + 16 s save -> 73 + 24 + 15
    assert timing.grace_period_seconds(16, 73) == 112
    assert timing.grace_period_seconds(10, 20.5) == 60, "short steps and saves still get the 60 s floor"
    assert timing.grace_period_seconds(10, 40.5) == 71


def test_token_batching_by_hand(pools):
    """2M tokens of 512 at micro-batch 6 on one rank: ceil(3906.25 / 6) = 652 steps -> 2,002,944 tokens (+0.15 %)."""
    from tests.planner.conftest import make_spec, run

    spec = make_spec(run("esm2-mlm", "rtx2080super"))
    b = planner._batching(spec, world=1, seq_len=512, max_micro=6)
    assert (b.micro_batch, b.grad_accum, b.effective, b.exact) == (6, 652, 2_002_944, False)
    assert "+0.15%" in " ".join(notes.batching_notes(b, seq_len=512, world=1))


def test_token_batching_spreads_the_budget_over_the_fewest_steps(pools):
    """PTM-Mamba: 400,000 tokens of 1024 on 4 ranks, up to 44 fit: ceil(400000 / (44 x 1024 x 4)) = 3 steps,
    then ceil(400000 / (3 x 1024 x 4)) = 33 per micro-batch -> 405,504 tokens (+1.38 %), not 44 x 3 -> 540,672."""
    from tests.planner.conftest import make_spec, run

    spec = make_spec(run("esm2-mlm", "a800", training={"globalBatch": {"tokens": 400_000}}))
    b = planner._batching(spec, world=4, seq_len=1024, max_micro=44)
    assert (b.micro_batch, b.grad_accum, b.effective, b.exact) == (33, 3, 405_504, False)
    (note,) = notes.batching_notes(b, seq_len=1024, world=4)
    assert "+5,504 (+1.38%)" in note and "training.globalBatch.tokens: 405504 would be exact" in note
    spec = make_spec(run("esm2-mlm", "a800", training={"globalBatch": {"tokens": 405_504}}))
    b = planner._batching(spec, world=4, seq_len=1024, max_micro=44)
    assert (b.micro_batch, b.grad_accum, b.exact) == (33, 3, True), "the suggested batch is exact"
    assert notes.batching_notes(b, seq_len=1024, world=4) == []


def test_sample_batching_spreads_an_uneven_batch_over_the_fewest_steps(pools):
    """1001 samples on 4 ranks, up to 44 fit: ceil(250.25 / 44) = 6 steps, ceil(1001 / 24) = 42 -> 1008, not 44 x 6 -> 1056."""
    from tests.planner.conftest import make_spec, run

    spec = make_spec(run("metagene-classification", "a800", training={"globalBatch": {"samples": 1001}}))
    b = planner._batching(spec, world=4, seq_len=512, max_micro=44)
    assert (b.micro_batch, b.grad_accum, b.effective) == (42, 6, 1008)
    assert "training.globalBatch.samples: 1008 would be exact" in " ".join(notes.batching_notes(b, seq_len=512, world=4))


def test_sample_batching_prefers_an_exact_divisor(pools):
    from tests.planner.conftest import make_spec, run

    spec = make_spec(run("metagene-classification", "a800", training={"globalBatch": {"samples": 32}}))
    b = planner._batching(spec, world=1, seq_len=512, max_micro=12)
    assert (b.micro_batch, b.grad_accum, b.exact) == (8, 4, True)
    spec = make_spec(run("metagene-classification", "a800", training={"globalBatch": {"samples": 30}}, hardware={"gpusPerNode": 4}))
    b = planner._batching(spec, world=4, seq_len=512, max_micro=12)
    assert b.effective == 32 and not b.exact and b.effective - 30 < b.micro_batch * 4
    assert math.ceil(30 / 4) == b.micro_batch
