"""The production model builders (from_pretrained by name), pointed at tiny checkpoints saved locally:
METAGENE-1's base loads in bf16 on purpose (its weights are stored fp32) with fp32 LoRA and head; ESM-based
recipes load their encoder by name and keep it frozen. Nothing is downloaded."""

from __future__ import annotations

import torch

from tests.recipes.conftest import tiny_config


def test_metagene_base_loads_in_bf16_with_fp32_adapters_and_head(tmp_path):
    from transformers import LlamaForCausalLM

    from helixrun_trainer.recipes.metagene_classification import build_classifier, tiny_llama_config

    name = tmp_path / "METAGENE-1"
    LlamaForCausalLM(tiny_llama_config()).to(torch.float32).save_pretrained(str(name))  # stored fp32, as published
    cfg = tiny_config("metagene-classification", tmp_path, f"model.name={name}")
    model = build_classifier(cfg, tiny=False, num_classes=3)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}, f"the frozen base should be bf16, got {frozen}"
    assert trainable and set(trainable.values()) == {torch.float32}, trainable
    assert any("lora_A" in n for n in trainable) and "head.weight" in trainable
    ids = torch.randint(6, 1024, (2, 12))
    logits = model(ids, torch.ones_like(ids))
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 2])).backward()
    assert model.head.weight.grad is not None
    model.gradient_checkpointing_enable()  # what the runtime calls when the plan asks


def test_ptm_mamba_and_structdiff_load_their_esm_by_name_frozen(tmp_path):
    from transformers import EsmConfig, EsmModel

    from helixrun_trainer.recipes.ptm_mamba import PTMMambaRecipe
    from helixrun_trainer.recipes.structdiff import StructDiffRecipe

    esm_dir = tmp_path / "esm2"
    EsmModel(EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, position_embedding_type="rotary", pad_token_id=1, mask_token_id=32,
                       max_position_embeddings=1026), add_pooling_layer=False).save_pretrained(str(esm_dir))
    cfg = tiny_config("ptm-mamba", tmp_path, f"model.encoder={esm_dir}", "model.options.dModel=16",
                      "model.options.layers=1", "model.options.esmLayer=2")
    ptm = PTMMambaRecipe().build_model(cfg, tiny=False)
    assert ptm.esm_dim == 32 and not any(p.requires_grad for p in ptm.esm.parameters())
    assert all(not k.startswith("esm.") for k in PTMMambaRecipe().trainable_state(ptm)), "checkpoints skip ESM"
    cfg = tiny_config("structdiff", tmp_path, f"model.name={esm_dir}", "model.options.denoiserHidden=16",
                      "model.options.denoiserLayers=1", "model.options.denoiserHeads=2", "model.options.timesteps=20")
    sd = StructDiffRecipe().build_model(cfg, tiny=False)
    trainable = [n for n, p in sd.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and not any(
        "esm" in n and "lora" not in n for n in trainable), "only LoRA trains inside ESM-2"
    assert sd.timesteps == 20 and len(sd.betas) == 20
    state = StructDiffRecipe().trainable_state(sd)
    assert "ema_updates" in state and any(k.startswith("ema__") for k in state)


def test_genechat_production_data_builds_before_the_model_with_dnabert2_tokenizer_by_name(tmp_path):
    import json

    from helixrun_trainer.recipes.dna_tokenizer import dnabert2_tokenizer
    from helixrun_trainer.recipes.genechat import (FAMILIES, GeneChatRecipe, tiny_corpus, tiny_genes, tiny_items,
                                                   tiny_text_tokenizer)

    genes = tiny_genes(0, n=4)
    encoder, llm = tmp_path / "DNABERT-2", tmp_path / "vicuna"
    dnabert2_tokenizer([s for _, s, _ in genes]).save_pretrained(str(encoder))
    tiny_text_tokenizer(tiny_corpus(tiny_items(genes)), None).save_pretrained(str(llm))
    split = tmp_path / "data" / "ncbi" / "train"
    split.mkdir(parents=True)
    (split / "seq.json").write_text(json.dumps({gene: [seq] for gene, seq, _ in genes}))
    (split / "qa_summary_rule.json").write_text(json.dumps([{"Gene Id": g, "Summary": FAMILIES[f][1]}
                                                            for g, _, f in genes]))
    cfg = tiny_config("genechat", tmp_path, f"model.name={llm}", f"model.encoder={encoder}")
    data = GeneChatRecipe().build_data(cfg, tiny=False, data_dir=tmp_path / "data")  # no model built
    batch = data.collate(data.train[:2], None)
    assert len(data.train) == 4 and batch["input_ids"].shape[0] == 2
