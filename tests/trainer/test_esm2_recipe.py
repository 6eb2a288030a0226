"""The esm2-mlm recipe: ESM alphabet, 80/10/10 masking from the runtime's generator, random crops,
and the production path (a pretrained snapshot on the cache volume, a FASTA file) without network."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.trainer.harness import start_trainer

from helixrun_trainer.recipes import get_recipe
from helixrun_trainer.recipes.esm2_mlm import CLS, EOS, MASK, PAD, Collate, encode, mask_tokens, tokenizer


def test_encode_matches_esm_tokenizer(tmp_path):
    tok = tokenizer(tmp_path)
    for seq in ("MKTAYIAKQR", "ACDEFGHIKLMNPQRSTVWYXBZUO"):
        assert encode(seq) == tok(seq)["input_ids"]
    assert len(tok) == 33 and tok.mask_token_id == MASK and tok.pad_token_id == PAD


def test_masking_is_80_10_10_of_15_percent_and_never_touches_specials():
    ids = torch.randint(4, 24, (64, 200))
    ids[:, 0], ids[:, -1] = CLS, EOS
    special = (ids == CLS) | (ids == EOS)
    inputs, labels = mask_tokens(ids, special, torch.Generator().manual_seed(0), 0.15)
    selected = labels != -100
    assert not (selected & special).any()
    rate = selected.sum().item() / (~special).sum().item()
    assert 0.14 < rate < 0.16, rate
    masked = (inputs == MASK) & selected
    unchanged = (inputs == ids) & selected
    assert 0.78 < masked.sum().item() / selected.sum().item() < 0.82
    assert 0.08 < unchanged.sum().item() / selected.sum().item() < 0.12  # 10% kept (+ random draws of the same id)
    assert torch.equal(labels[selected], ids[selected])


def test_every_sequence_gets_a_masked_position():
    ids = torch.tensor([[CLS, 5, 6, EOS]] * 50)
    special = (ids == CLS) | (ids == EOS)
    _, labels = mask_tokens(ids, special, torch.Generator().manual_seed(1), 0.01)
    assert ((labels != -100).sum(dim=1) >= 1).all()


def test_collate_draws_only_from_the_generator_and_crops_long_sequences():
    collate = Collate(max_length=16, mask_probability=0.15)
    samples = [encode("M" * 40), encode("ACDE")]
    a = collate(samples, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = collate(samples, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape == (2, 16)
    assert a["attention_mask"][1].sum() == 6


def test_registry_imports_lazily_and_refuses_unknown_recipes():
    assert get_recipe("esm2-mlm").name == "esm2-mlm"
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("alphafold")


@pytest.mark.slow
def test_production_path_loads_a_snapshot_from_the_cache_volume_and_reads_fasta(run_file, tmp_path):
    from helixrun_trainer.formats.fasta import write_fasta
    from helixrun_trainer.recipes.esm2_mlm import tiny_sequences

    workdir = tmp_path / "run"
    snapshot = workdir / "cache" / "facebook" / "esm2_t6_8M_UR50D"
    torch.manual_seed(0)
    get_recipe("esm2-mlm").build_model(None, True).save_pretrained(str(snapshot))
    write_fasta(tiny_sequences(1, n=120), tmp_path / "proteins.fasta")
    cmd = [sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f", str(run_file), "--workdir", str(workdir),
           "--metrics-port", "0"]
    for s in ("model.name=facebook/esm2_t6_8M_UR50D", f"data.path={tmp_path}/proteins.fasta", "data.options.clusters=null",
              "training.maxSteps=4",
              "checkpointing.everySteps=2", "evaluation.everySteps=2", "training.globalBatch.tokens=2048",
              "hardware.gpusPerNode=1", "training.logEverySteps=1"):
        cmd += ["--set", s]
    t = start_trainer(cmd, workdir, HF_HUB_OFFLINE="1")
    assert t.wait() == 0, t.log[-3000:]
    records = [json.loads(line) for line in (workdir / "records" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and "eval_perplexity" in records[-1]
    split = json.loads((workdir / "records" / "split_mapping.json").read_text())
    assert split["train"] + split["eval"] == 120 and split["source"].endswith("proteins.fasta")
    assert (workdir / "checkpoints" / "final" / "vocab.txt").is_file()


def test_token_store_holds_the_same_ids_as_encode_in_one_byte_each():
    from helixrun_trainer.recipes.esm2_mlm import TokenStore

    seqs = ["MKTAYIAKQR", "ACDEFGHIKLMNPQRSTVWYXBZUO", "A"]
    builder = TokenStore.build()
    for seq in seqs:
        builder.add(seq)
    store = builder.done()
    assert len(store) == 3 and store.tokens.dtype.itemsize == 1
    assert [store[i].tolist() for i in range(3)] == [encode(s) for s in seqs]
    assert store.lengths(cap=5) == [5, 5, 3]
