"""PTM-Mamba as its reference (programmablebio/ptm-mamba) builds and trains it, fact by fact.

Each test names the reference file it pins; docs/FIDELITY.md has the whole table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helixrun_trainer.data import BatchOrder
from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes.ptm_mamba import Collate, mask_batch, split_by_sizes, tiny_ptm_sequences, vocab
from helixrun_trainer.recipes.ptm_mamba.model import PTMMamba, tiny_esm
from tests.recipes.conftest import tiny_config

# protein_lm/tokenizer/tokenizer.py, PTMTokenizer: the token list, whose index is the id.
REFERENCE_TOKENS = [
    "<cls>", "<pad>", "<eos>", "<unk>", ".", "-", "<null_1>", "<mask>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B",
    "U", "Z", "O", "PTM",
    "<N-linked (GlcNAc...) asparagine>", "<Pyrrolidone carboxylic acid>", "<Phosphoserine>", "<Phosphothreonine>",
    "<N-acetylalanine>", "<N-acetylmethionine>", "<N6-acetyllysine>", "<Phosphotyrosine>",
    "<S-diacylglycerol cysteine>", "<N6-(pyridoxal phosphate)lysine>", "<N-acetylserine>", "<N6-carboxylysine>",
    "<N6-succinyllysine>", "<S-palmitoyl cysteine>", "<O-(pantetheine 4'-phosphoryl)serine>", "<Sulfotyrosine>",
    "<O-linked (GalNAc...) threonine>", "<Omega-N-methylarginine>", "<N-myristoyl glycine>", "<4-hydroxyproline>",
    "<Asymmetric dimethylarginine>", "<N5-methylglutamine>", "<4-aspartylphosphate>", "<S-geranylgeranyl cysteine>",
    "<4-carboxyglutamate>",
]


def tiny_model(layers: int = 2, seed: int = 0) -> PTMMamba:
    torch.manual_seed(seed)
    return PTMMamba(d_model=32, layers=layers, esm=tiny_esm(), esm_dim=32, esm_layer=2, state_size=8)


# -- vocabulary and data (tokenizer.py, ptm_dataset.py) -------------------------------------------------------


def test_vocabulary_is_the_reference_tokenizer_id_for_id():
    assert list(vocab.TOKENS) == REFERENCE_TOKENS
    assert (vocab.CLS, vocab.PAD, vocab.EOS, vocab.UNK, vocab.MASK) == (0, 1, 2, 3, 7)
    # is_special_token: id < id("L"); is_ptm_token: id > id("PTM")
    assert vocab.SPECIAL_IDS == set(range(REFERENCE_TOKENS.index("L")))
    assert vocab.PTM_IDS == set(range(REFERENCE_TOKENS.index("PTM") + 1, 59))


@pytest.mark.parametrize("sequence, ids", [
    ("M<N-linked (GlcNAc...) asparagine>K", [0, 24, 34, 19, 2]),
    ("M<N-acetylalanine>K", [0, 24, 38, 19, 2]),  # the reference README's inference example
    ("<O-(pantetheine 4'-phosphoryl)serine>PTM", [0, 48, 18, 15, 24, 2]),  # the trie reads "PTM" as P, T, M
])
def test_reference_ptm_sequences_tokenize_to_the_reference_ids(sequence, ids):
    assert vocab.encode(sequence) == ids
    assert vocab.decode(ids) == sequence


def test_every_ptm_token_modifies_the_residue_its_name_says():
    assert set(vocab.PTM_RESIDUE) == set(REFERENCE_TOKENS[34:])
    for token, residues in vocab.PTM_RESIDUE.items():
        assert set(residues) <= set(vocab.RESIDUES[:20]), token


def write_sites(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ori_seq,pos,token\n" + "".join(f"{s},{p},{t}\n" for s, p, t in rows))


def test_a_reference_site_table_becomes_ptm_sequences(tmp_path):
    from helixrun_trainer.recipes.ptm_mamba import read_ptm_table

    path = tmp_path / "ptm_labels.csv"
    write_sites(path, [("MNKSP", 1, "<N-linked (GlcNAc...) asparagine>"), ("MNKSP", 3, "<Phosphoserine>"),
                       ("AKT", 1, "<N6-acetyllysine>"), ("MNKSP", 3, "<Phosphoserine>")])
    records = read_ptm_table(path, {"layout": "sites"}, 100)
    assert [(uid, seq) for uid, seq, _ in records] == [
        ("1", "M<N-linked (GlcNAc...) asparagine>K<Phosphoserine>P"), ("3", "A<N6-acetyllysine>T")]  # data row numbers
    assert records[0][2] == [0, 24, 34, 19, 36, 18, 2]


@pytest.mark.parametrize("row, message", [
    (("MNKSP", 4, "<Phosphoserine>"), r"ptm_labels.csv:2: <Phosphoserine> at pos 4 replaces 'P', not S"),
    (("MNKSP", 5, "<Phosphoserine>"), r"ptm_labels.csv:2: pos 5 is outside the 5-residue sequence"),
    (("MNKSP", "x", "<Phosphoserine>"), r"ptm_labels.csv:2: pos 'x' is not an integer"),
    (("MNKSP", 3, "Phosphoserine"), r"ptm_labels.csv:2: token 'Phosphoserine' is not one of"),
])
def test_a_bad_site_row_is_named(tmp_path, row, message):
    from helixrun_trainer.recipes.ptm_mamba import read_ptm_table

    path = tmp_path / "ptm_labels.csv"
    write_sites(path, [row])
    with pytest.raises(DataError, match=message):
        read_ptm_table(path, {"layout": "sites"}, 100)


def test_split_is_the_references_datasets_shuffle_then_unshuffled_splits():
    # datasets' shuffle(seed=2) is numpy default_rng(2).permutation: [2, 0, 7, 6, 9, 5, 3, 4, 8, 1]; the
    # train_test_splits (shuffle=False) then take the last 3 as held out, the last 1 of those as test.
    records = [(f"p{i}", "MK", [0, 24, 19, 2]) for i in range(10)]
    train, val, test = split_by_sizes(records, 2, 1, 2, "table")
    assert [r[0] for r in train] == ["p2", "p0", "p7", "p6", "p9", "p5", "p3"]
    assert [r[0] for r in val] == ["p4", "p8"] and [r[0] for r in test] == ["p1"]


# -- model (lm.py, mamba_ssm/modules/mamba_simple.py) ---------------------------------------------------------


def test_mixers_get_mambas_initialisation():
    layers = 4
    model = tiny_model(layers=layers)
    for block in model.blocks:
        for mixer in (block.forward_mixer, block.backward_mixer):
            dt = torch.nn.functional.softplus(mixer.dt_proj.bias.detach())
            assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6, "softplus(dt_bias) outside [0.001, 0.1]"
            assert dt.min() < 0.002 and dt.max() > 0.05, "dt is not spread log-uniformly over [0.001, 0.1]"
            assert torch.allclose(mixer.A_log.detach().exp(), torch.arange(1, 9.0).expand(mixer.A_log.shape))
            assert torch.equal(mixer.D.detach(), torch.ones_like(mixer.D))
            # kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the reference divides by sqrt(layers)
            bound = 1 / math.sqrt(mixer.out_proj.in_features) / math.sqrt(layers)
            weights = mixer.out_proj.weight.detach().abs()
            assert weights.max() <= bound and weights.max() > 0.9 * bound, (weights.max(), bound)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(not linear.bias.any() for linear in (model.gate, *(b.merge for b in model.blocks)))


def test_fusion_is_the_references_scalar_gate_and_bias_free_esm_projection():
    model = tiny_model()
    assert model.gate.out_features == 1, "lm.py: gate = Linear(2 * d_model, 1), one value per position"
    assert model.esm_proj.bias is None, "lm.py: esm_head = Linear(esm_embed_dim, d_model, bias=False)"


# -- masking and batching (mask.py, collate.py, train.py) ---------------------------------------------------------


def test_the_masking_mode_is_drawn_once_per_batch():
    sequences = [seq for _, seq in tiny_ptm_sequences(3, 40, 40) if "<" in seq][:6]
    batch = Collate()([(str(i), s, vocab.encode(s)) for i, s in enumerate(sequences)], torch.Generator())
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    is_ptm = torch.isin(ids, torch.tensor(sorted(vocab.PTM_IDS)))
    modes = set()
    for seed in range(40):
        _, labels = mask_batch(ids, torch.Generator().manual_seed(seed), probability=0.0, plain_probability=0.5)
        masked_ptms = (labels != -100)[is_ptm]
        assert masked_ptms.all() or masked_ptms.sum() <= 1, "some sequences masked their PTMs and others not"
        modes.add(bool(masked_ptms.all()))
    assert modes == {True, False}, "both masking modes should occur"


def test_length_ascending_batch_order_is_the_references_sampler():
    lengths = [7, 3, 9, 3, 5, 8]
    order = BatchOrder(len(lengths), 0, lengths=lengths, batch_size=2, length_sorted=True)
    assert order.epoch_batches(0) == [[1, 3], [4, 0], [5, 2]] == order.epoch_batches(1)
    budget = BatchOrder(len(lengths), 0, lengths=lengths, max_tokens=16, length_sorted=True)
    assert [lengths[i] for b in budget.epoch_batches(3) for i in b] == sorted(lengths)
    assert budget.fingerprint() != BatchOrder(len(lengths), 0, lengths=lengths, max_tokens=16).fingerprint()


def test_batch_order_option_reaches_the_runtime(tmp_path):
    from helixrun_trainer.recipes.ptm_mamba import PTMMambaRecipe

    for order, sorted_ in (("length-ascending", True), ("shuffled", False)):
        cfg = tiny_config("ptm-mamba", tmp_path, f"data.options.batchOrder={order}")
        assert PTMMambaRecipe().build_data(cfg, True, tmp_path).length_sorted is sorted_


# -- it learns ---------------------------------------------------------------------------------------------------


def test_overfits_a_fixed_batch():
    """Loss on one fixed batch with a fixed mask falls by 90% within a few hundred steps: a shifted label or a
    detached graph would stop it."""
    model = tiny_model(layers=1)
    records = [(str(i), s, vocab.encode(s)) for i, s in tiny_ptm_sequences(5, 4, 20)]
    batch = Collate()(records, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    while len(losses) < 300 and (not losses or losses[-1] > 0.1 * losses[0]):
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"
