"""Parameter, gradient and optimizer-state bytes: the planner's numbers against tiny torch models, exactly.

These quantities are device-independent, so a CPU run with one real AdamW step
measures what a GPU would hold.
"""

from __future__ import annotations

import pytest

import torch
import transformers
import peft

from helixrun.planner import memory as mem  # noqa: E402
from helixrun.planner.models import CATALOG, Architecture, lookup  # noqa: E402

TINY_LLAMA = dict(hidden=64, layers=2, heads=4, ffn=172, vocab=1024)
TINY_ESM = dict(hidden=32, layers=2, heads=4, ffn=128, vocab=33)


def tiny_llama_arch(**kw) -> Architecture:
    shape = {**TINY_LLAMA, **kw}
    return Architecture("tiny/llama", "tiny llama", "llama", max_positions=512, storage_dtype="fp32", **shape)


def tiny_esm_arch(**kw) -> Architecture:
    shape = {**TINY_ESM, **kw}
    return Architecture("tiny/esm", "tiny esm", "esm", max_positions=1026, storage_dtype="fp32", **shape)


def build_llama(arch: Architecture, head: str):
    cfg = transformers.LlamaConfig(
        vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads or arch.heads,
        intermediate_size=arch.ffn, max_position_embeddings=512, pad_token_id=0, bos_token_id=3, eos_token_id=4,
    )
    if head == "lm":
        return transformers.LlamaForCausalLM(cfg)
    cfg.num_labels = int(head[4:])
    return transformers.LlamaForSequenceClassification(cfg)


def build_esm(arch: Architecture):
    cfg = transformers.EsmConfig(
        vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
        intermediate_size=arch.ffn, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
        mask_token_id=32, max_position_embeddings=1026,
    )
    return transformers.EsmForMaskedLM(cfg)


def unique_params(model):
    seen = {}
    for p in model.parameters():
        seen[p.data_ptr()] = p
    return list(seen.values())


def state_bytes_after_step(model):
    """(weights, gradients, optimizer) bytes of trainable params after one real AdamW step on CPU."""
    trainable = [p for p in unique_params(model) if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    ids = torch.randint(5, 30, (2, 16))
    out = model(input_ids=ids, labels=ids if not hasattr(model, "score") else torch.tensor([0, 1]))
    out.loss.backward()
    opt.step()
    weights = sum(p.numel() * p.element_size() for p in trainable)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    optimizer = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return weights, grads, optimizer


@pytest.mark.parametrize("head", ["lm", "cls:2", "cls:7"])
@pytest.mark.parametrize("shape", [{}, {"hidden": 96, "heads": 6, "ffn": 256}, {"kv_heads": 2}])
def test_llama_parameter_count_matches_transformers(head, shape):
    arch = tiny_llama_arch(**shape)
    model = build_llama(arch, head)
    params = unique_params(model)
    assert arch.params(head) == sum(p.numel() for p in params), "parameter count from shapes differs from transformers"
    assert arch.tensors(head) == len(params), "parameter tensor count (AdamW step tensors) differs"


@pytest.mark.parametrize("shape", [{}, {"hidden": 64, "layers": 3, "ffn": 256}])
def test_esm_parameter_count_matches_transformers(shape):
    arch = tiny_esm_arch(**shape)
    model = build_esm(arch)
    params = unique_params(model)  # the MLM decoder is tied to the word embeddings
    assert arch.params("mlm") == sum(p.numel() for p in params)
    assert arch.tensors("mlm") == len(params)


def test_full_training_state_bytes_match_one_adamw_step():
    arch = tiny_llama_arch()
    model = build_llama(arch, "lm")
    weights, grads, optimizer = state_bytes_after_step(model)
    assert (weights, grads, optimizer) == mem.trainable_state_bytes(arch.params("lm"), arch.tensors("lm"))


def test_esm_full_training_state_bytes_match_one_adamw_step():
    arch = tiny_esm_arch()
    model = build_esm(arch)
    expected = mem.trainable_state_bytes(arch.params("mlm"), arch.tensors("mlm"), arch.unused_params("mlm"))
    assert state_bytes_after_step(model) == expected, "ESM's contact head is built but gets no gradient in MLM"


@pytest.mark.parametrize(
    "targets,r",
    [(("q_proj", "v_proj"), 8), (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 4), (("down_proj",), 16)],
)
def test_lora_params_and_state_bytes_match_peft(targets, r):
    arch = tiny_llama_arch()
    model = build_llama(arch, "lm").to(torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.05))
    lora_params, lora_tensors = arch.lora_params(r, targets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert lora_params == sum(p.numel() for p in trainable)
    assert all(p.dtype == torch.float32 for p in trainable), "PEFT keeps adapters in fp32 on a half base"
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert frozen == arch.params("lm") * mem.HALF, "frozen base in bf16"
    assert state_bytes_after_step(model) == mem.trainable_state_bytes(lora_params, lora_tensors)


def test_esm_lora_matches_peft():
    arch = tiny_esm_arch()
    model = peft.get_peft_model(build_esm(arch), peft.LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"]))
    assert arch.lora_params(16, ("query", "value"))[0] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_quantizable_params_are_the_layer_linear_weights():
    arch = tiny_llama_arch()
    model = build_llama(arch, "lm")
    linear = sum(
        m.weight.numel() for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in name
    )
    assert arch.quantizable_params() == linear


def test_catalog_sizes_against_published_figures():
    """Shapes give the published sizes: METAGENE-1 6.48 B (25.94 GB fp32 on the Hub), ESM-2 650M, Vicuna 13B, DNABERT-2 117M."""
    metagene = lookup("metagene-ai/METAGENE-1")
    assert metagene.weight_bytes_stored("lm") / 1e9 == pytest.approx(25.94, rel=0.002)
    assert lookup("facebook/esm2_t33_650M_UR50D").params("mlm") / 1e6 == pytest.approx(651, rel=0.001)
    assert lookup("facebook/esm2_t6_8M_UR50D").params("mlm") / 1e6 == pytest.approx(7.5, rel=0.01)
    assert lookup("facebook/esm2_t36_3B_UR50D").params("mlm") / 1e9 == pytest.approx(2.84, rel=0.01)
    assert lookup("lmsys/vicuna-13b-v1.5").params("lm") / 1e9 == pytest.approx(13.02, rel=0.001)
    assert lookup("zhihan1996/DNABERT-2-117M").params() / 1e6 == pytest.approx(117, rel=0.01)
    assert all(a.storage_dtype in ("fp32", "fp16", "bf16") for a in CATALOG.values())
