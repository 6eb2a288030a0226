"""METAGENE-1 classification as its references do it: reads tokenized as metagene-pretrain fed them (no BOS,
[EOS] appended), dropout 0.1 before the head (m2lab-ntu's modules/modeling.py), and early stopping on macro-F1
with patience (m2lab-ntu's train.py) working in the trainer."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from helixrun_trainer.early_stopping import EarlyStopping
from helixrun_trainer.recipes import get_recipe
from helixrun_trainer.recipes.dna_tokenizer import metagene_tokenizer
from helixrun_trainer.recipes.metagene_classification import read_token_ids, tiny_reads
from helixrun_trainer.state import TrainState

from tests.recipes.conftest import REPO, metrics, tiny_config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return metagene_tokenizer([s for _, s, _ in tiny_reads(0)], cache=tmp_path_factory.mktemp("tok"))


def test_a_read_is_its_bpe_tokens_then_eos_without_bos(tokenizer):
    read = "ACGTTGCAAACCGGTTTGCA"
    bpe = tokenizer(read, add_special_tokens=False)["input_ids"]
    eos = tokenizer.convert_tokens_to_ids("[EOS]")
    assert eos == 5, "metagene-pretrain's mgfm-1024 tokenizer has [EOS] at 5, the id nao.py appends"
    (ids,), cut = read_token_ids(tokenizer, [read], max_tokens=512)
    assert ids == [*bpe, eos] and cut == 0
    assert tokenizer.convert_tokens_to_ids("[BOS]") not in ids
    # Longer than the limit: cut to max - 1 tokens, then [EOS] (as nao.py cuts to max_seq_length - 1).
    (short,), cut = read_token_ids(tokenizer, [read * 10], max_tokens=8)
    assert short == [*tokenizer(read * 10, add_special_tokens=False)["input_ids"][:7], eos] and cut == 1


def test_the_training_data_carries_the_pretraining_token_layout(tmp_path):
    cfg = tiny_config("metagene-classification", tmp_path)
    recipe = get_recipe("metagene-classification")
    data = recipe.build_data(cfg, True, tmp_path / "data")
    eos, bos = recipe.tokenizer.eos_token_id, recipe.tokenizer.bos_token_id
    assert all(ids[-1] == eos and ids[0] != bos and bos not in ids for ids, _ in data.train)


def test_the_head_has_the_references_dropout(tmp_path):
    cfg = tiny_config("metagene-classification", tmp_path)
    model = get_recipe("metagene-classification").build_model(cfg, True)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.1
    ids = torch.randint(7, 1024, (4, 16))
    mask = torch.ones_like(ids)
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask)), "no dropout at evaluation"
    model.train()
    model.base.eval()  # only the head's dropout stays active
    torch.manual_seed(0)
    assert not torch.equal(model(ids, mask), model(ids, mask)), "dropout before the head while training"


@pytest.mark.parametrize("mode, values, stops_after", [
    ("max", [0.5, 0.6, 0.6, 0.59, 0.61, 0.61, 0.61, 0.61], 8),  # ties do not improve; 0.61 at 5 resets
    ("max", [0.5, 0.4, 0.3, 0.2], 4),
    ("min", [1.0, 0.9, 0.8, 0.7, 0.6], None),
    ("max", [0.5, math.nan, math.nan, math.nan], 4),  # a NaN never improves
])
def test_early_stopping_counts_evaluations_without_strict_improvement(mode, values, stops_after):
    rule, state = EarlyStopping("eval_macro_f1", mode, patience=3), TrainState()
    stopped_at = None
    for n, value in enumerate(values, 1):
        rule.observe(state, {"eval_macro_f1": value})
        if rule.stopped(state) and stopped_at is None:
            stopped_at = n
    assert stopped_at == stops_after


def test_early_stopping_ignores_evaluations_without_its_metric():
    rule, state = EarlyStopping("eval_macro_f1", "max", patience=1), TrainState()
    rule.observe(state, {})
    assert not rule.stopped(state) and state.best_metric is None


@pytest.mark.slow
def test_a_run_stops_once_macro_f1_goes_patience_evaluations_without_improving_and_stays_stopped(run_file, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f", str(run_file("metagene-classification")),
           "--workdir", str(workdir), "--tiny", "--metrics-port", "0"]
    for s in ("training.maxSteps=60", "evaluation.everySteps=1",
              "checkpointing.everySteps=100", "evaluation.earlyStopping.metric=eval_macro_f1",
              "evaluation.earlyStopping.mode=max", "evaluation.earlyStopping.patience=3"):
        cmd += ["--set", s]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    f1 = [r["eval_macro_f1"] for r in metrics(workdir)]
    best, since, expected = -1.0, 0, None
    for step, value in enumerate(f1, 1):
        best, since = (value, 0) if value > best else (best, since + 1)
        if since == 3:
            expected = step
            break
    assert expected is not None and expected < 60, f"macro-F1 improved at nearly every evaluation: {f1}"
    assert len(f1) == expected, f"stopped at step {len(f1)}, the rule fires at step {expected}: {f1}"
    assert (workdir / "checkpoints" / f"step-{expected:08d}" / "COMPLETE").exists(), "the stopping step is saved"
    assert (workdir / "checkpoints" / "final").is_dir()
    assert "early stopping at step" in first.stderr + first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in metrics(workdir)][-1] == expected, "a resumed run stays stopped"
    meta = json.loads((workdir / "checkpoints" / f"step-{expected:08d}" / "manifest.json").read_text())
    assert meta["meta"]["init"] == "pretrained", "checkpoints record where the weights started"
