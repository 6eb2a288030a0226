"""Activation bytes: the planner's per-layer profiles against what autograd really saves, on CPU.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor saved for backward;
counting unique storages that are not parameters gives the activation memory of
a forward pass (device-independent for the same ops). The profiles in
planner/memory.py were fitted on other shapes; these shapes are new.
Eager attention is compared for ESM (its SDPA path on CPU falls back to the math
kernel with a mask, which CUDA does not).
"""

from __future__ import annotations

import pytest

import torch
import transformers
import peft

from helixrun.planner import memory as mem  # noqa: E402
from helixrun.planner.models import Architecture  # noqa: E402

TOLERANCE = 0.10


def saved_bytes(model, ids, autocast: bool) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids, labels=ids)
        else:
            model(input_ids=ids, labels=ids)
    return sum(seen.values())


def build(arch: Architecture, layers: int, attention: str):
    if arch.family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=layers, num_attention_heads=arch.heads,
            intermediate_size=arch.ffn, max_position_embeddings=1024, attn_implementation=attention,
        )
        return transformers.LlamaForCausalLM(cfg)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=arch.hidden, num_hidden_layers=layers, num_attention_heads=arch.heads,
        intermediate_size=arch.ffn, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
        mask_token_id=32, max_position_embeddings=1026, attn_implementation=attention,
    )
    return transformers.EsmForMaskedLM(cfg)


def measured_layer_bytes(arch, role, attention, batch, seq, lora=None) -> float:
    """Bytes saved per layer (difference between a 4- and a 2-layer model), whole micro-batch."""
    totals = []
    for layers in (2, 4):
        torch.manual_seed(0)
        model = build(arch, layers, attention)
        if role in ("lora", "train-half"):
            model = model.to(torch.bfloat16)
        if role == "lora":
            model = peft.get_peft_model(model, peft.LoraConfig(**lora))
        model.train()
        ids = torch.randint(5, min(arch.vocab, 33) - 3, (batch, seq))
        totals.append(saved_bytes(model, ids, autocast=role != "train-half"))
    return (totals[1] - totals[0]) / 2


def predicted_layer_bytes(arch, role, attention, batch, seq, lora=None) -> float:
    lora = lora or {}
    per_token = mem.layer_activation_bytes(
        arch, role, attention, seq, lora_targets=tuple(lora.get("target_modules", ())),
        lora_dropout=lora.get("lora_dropout", 0.0), lora_r=lora.get("r", 0),
    )
    linear = sum(l.params for l in arch.layer_linears())
    if role == "train":
        cast = mem.HALF * linear  # autocast's half copies of the layer's fp32 weights
    elif role == "lora":
        cast = mem.HALF * arch.lora_params(lora["r"], tuple(lora["target_modules"]))[0] / arch.layers
    else:
        cast = 0
    return batch * seq * per_token + cast


LLAMA = Architecture("t/llama", "llama", "llama", layers=1, hidden=384, heads=6, ffn=1000, vocab=1024, max_positions=1024, storage_dtype="fp32")
LLAMA_NARROW = Architecture("t/llama2", "llama", "llama", layers=1, hidden=128, heads=2, ffn=512, vocab=512, max_positions=1024, storage_dtype="fp32")
ESM = Architecture("t/esm", "esm", "esm", layers=1, hidden=192, heads=6, ffn=768, vocab=33, max_positions=1026, storage_dtype="fp32")
QV = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}

CASES = [
    (LLAMA, "train", "sdpa", 2, 96, None),
    (LLAMA, "train", "eager", 2, 96, None),
    (LLAMA_NARROW, "train", "sdpa", 3, 160, None),
    (LLAMA, "train-half", "sdpa", 2, 96, None),
    (LLAMA, "lora", "sdpa", 2, 96, QV),
    (LLAMA, "lora", "eager", 2, 96, QV),
    (LLAMA, "lora", "sdpa", 2, 96, {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}),
    (ESM, "train", "eager", 2, 80, None),
    (ESM, "train-half", "eager", 2, 80, None),
    (ESM, "lora", "eager", 2, 80, {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["query", "value"]}),
]


@pytest.mark.parametrize("arch,role,attention,batch,seq,lora", CASES, ids=lambda v: getattr(v, "display", None) or str(v))
def test_layer_activations_match_saved_tensors(arch, role, attention, batch, seq, lora):
    measured = measured_layer_bytes(arch, role, attention, batch, seq, lora)
    predicted = predicted_layer_bytes(arch, role, attention, batch, seq, lora)
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (
        f"{arch.family} {role} {attention}: planner {predicted:,.0f} B per layer, autograd saved {measured:,.0f} B"
    )


def test_korthikanti_formula_underestimates_a_llama_layer():
    """sbh(34 + 5as/h) was derived for GPT (GeLU MLP of 4h, LayerNorm): HF Llama's SwiGLU + fp32 RMSNorm save more."""
    batch, seq = 2, 96
    measured = measured_layer_bytes(LLAMA, "train", "sdpa", batch, seq) - mem.HALF * sum(l.params for l in LLAMA.layer_linears())
    korthikanti_flash = batch * seq * 34 * LLAMA.hidden  # no s² term with fused attention
    assert measured / korthikanti_flash > 1.3, f"measured {measured:,.0f} vs Korthikanti {korthikanti_flash:,.0f}"
    # and our profile is within tolerance where Korthikanti is not
    ours = batch * seq * mem.layer_activation_bytes(LLAMA, "train", "sdpa", seq)
    assert ours == pytest.approx(measured, rel=TOLERANCE)


def test_frozen_base_saves_less_than_full_training():
    """A frozen linear needs its weight, not its input, for the input gradient: LoRA layers save less."""
    full = mem.layer_activation_bytes(LLAMA, "train", "sdpa", 512)
    lora = mem.layer_activation_bytes(LLAMA, "lora", "sdpa", 512, lora_targets=("q_proj", "v_proj"), lora_dropout=0.05, lora_r=8)
    assert lora < 0.85 * full
