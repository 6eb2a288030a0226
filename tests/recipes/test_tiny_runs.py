"""Each recipe's --tiny run as the user starts it: it trains on CPU, its loss goes down, it writes checkpoints
and final/, evaluation reports the recipe's metrics, a run killed mid-way resumes to bit-identical losses
and weights, and the recipe's command (predict / sample) works on the export."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from tests.recipes.conftest import REPO, final_weights, metrics
from tests.trainer.harness import start_trainer, train_command, trainer_env

STEPS = 12  # tiny runs here: 12 steps, a checkpoint every 5, evaluation at 10 and 12
SETS = (f"training.maxSteps={STEPS}",)

EVAL_KEYS = {
    "metagene-classification": {"eval_loss", "eval_accuracy", "eval_macro_f1", "eval_mcc", "eval_auroc"},
    "ptm-mamba": {"eval_loss", "eval_perplexity", "eval_accuracy"},
    "structdiff": {"eval_loss", "eval_mse", "eval_recovery"},
    "genechat": {"eval_loss", "eval_bleu1", "eval_bleu2", "eval_bleu3", "eval_bleu4"},
}
EXTRA_SETS = {
    # bigger samples batches so 12 steps see the data more than once
    "metagene-classification": ("training.globalBatch.samples=16",),
    "structdiff": ("training.globalBatch.samples=16",),
    "genechat": (),
    "ptm-mamba": (),
}


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """One uninterrupted tiny run per recipe (shared by the tests below)."""
    from tests.recipes.conftest import run_yaml

    out = {}
    for recipe in EVAL_KEYS:
        workdir = tmp_path_factory.mktemp(recipe)
        run_file = workdir / "run.yaml"
        run_file.write_text(run_yaml(recipe))
        t = start_trainer(train_command(run_file, workdir, *SETS, *EXTRA_SETS[recipe]), workdir)
        code = t.wait()
        assert code == 0, f"{recipe}: tiny run failed ({code}):\n{t.log[-4000:]}"
        out[recipe] = (run_file, workdir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(EVAL_KEYS))
def test_tiny_run_trains_checkpoints_and_evaluates(recipe, reference_runs):
    _, workdir = reference_runs[recipe]
    records = metrics(workdir)
    losses = [r["loss"] for r in records]
    assert len(losses) == STEPS, f"{recipe}: expected a metrics line per step, got {len(losses)}"
    first, last = _mean(losses[:3]), _mean(losses[-3:])
    assert last < first, f"{recipe}: loss did not go down over the tiny run ({first:.4f} -> {last:.4f}): {losses}"
    evals = [r for r in records if "eval_loss" in r]
    assert evals, f"{recipe}: no evaluation in the metrics"
    missing = EVAL_KEYS[recipe] - set(evals[-1])
    assert not missing, f"{recipe}: evaluation lacks {sorted(missing)}: {sorted(evals[-1])}"
    ckpts = workdir / "checkpoints"
    assert (ckpts / "step-00000012" / "COMPLETE").exists(), f"{recipe}: no complete checkpoint at the last step"
    assert (ckpts / "final").is_dir(), f"{recipe}: no final/ export"
    assert (workdir / "records" / "split_mapping.json").exists(), f"{recipe}: no split_mapping.json"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(EVAL_KEYS))
def test_killed_tiny_run_resumes_bitwise_exact(recipe, reference_runs, tmp_path):
    run_file, reference = reference_runs[recipe]
    cmd = train_command(run_file, tmp_path, *SETS, *EXTRA_SETS[recipe])
    t = start_trainer(cmd, tmp_path, pause="7:after-step")
    t.wait_paused(7, "after-step")
    t.kill()  # the last checkpoint is step 5: steps 6-7 are lost and must be replayed identically
    t = start_trainer(cmd, tmp_path, log_name="resumed.log")
    assert t.wait() == 0, f"{recipe}: resumed run failed:\n{t.log[-4000:]}"
    assert "resumed from" in t.log, f"{recipe}: the second process did not resume:\n{t.log[-2000:]}"
    want = {r["step"]: r["loss"] for r in metrics(reference)}
    got = {r["step"]: r["loss"] for r in metrics(tmp_path)}
    assert got == want, f"{recipe}: per-step losses differ after resume:\nwant {want}\ngot  {got}"
    a, b = final_weights(reference, recipe), final_weights(tmp_path, recipe)
    assert a.keys() == b.keys(), f"{recipe}: exports hold different tensors"
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{recipe}: final weights differ bitwise after resume: {differing[:5]}"


@pytest.mark.slow
def test_structdiff_checkpoint_carries_ema_and_sample_writes_peptides(reference_runs, tmp_path):
    _, workdir = reference_runs["structdiff"]
    weights = final_weights(workdir, "structdiff")
    ema = [k for k in weights if k.startswith("ema__")]
    assert ema and "ema_updates" in weights, "the export lacks the EMA weights"
    assert int(weights["ema_updates"]) == STEPS + 1, "EMA should fold in each optimizer step once (+ the initial)"
    out = tmp_path / "peptides.fasta"
    proc = subprocess.run([sys.executable, "-m", "helixrun_trainer.recipes.structdiff", "sample", "--model",
                           str(workdir / "checkpoints" / "final"), "--num", "3", "--length", "9", "--output", str(out)],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peptides = [line for line in out.read_text().splitlines() if not line.startswith(">")]
    assert len(peptides) == 3 and all(len(p) == 9 and set(p) <= set("ACDEFGHIKLMNPQRSTVWY") for p in peptides), peptides


@pytest.mark.slow
def test_metagene_predict_writes_predictions_csv(reference_runs, tmp_path):
    _, workdir = reference_runs["metagene-classification"]
    reads = tmp_path / "reads.fasta"
    reads.write_text(">r1\nATATATTTAAATATATAAATTTAT\n>r2\nGCGCGGCCGCGGGCCGCGCCG\n>r3\nACGTTGCAACGTTGCAACGTTGCA\n")
    out = tmp_path / "predictions.csv"
    proc = subprocess.run([sys.executable, "-m", "helixrun_trainer.recipes.metagene_classification", "predict",
                           "--model", str(workdir / "checkpoints" / "final"), "--input", str(reads), "--output", str(out)],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"]
    for row in rows:
        probs = [float(v) for k, v in row.items() if k.startswith("p_")]
        assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-4, row


@pytest.mark.slow
def test_genechat_predict_describes_a_fasta_gene(reference_runs, tmp_path):
    _, workdir = reference_runs["genechat"]
    gene = tmp_path / "gene.fa"
    gene.write_text(">7157\n" + "ATGAAACGC" * 20 + "\n")
    proc = subprocess.run([sys.executable, "-m", "helixrun_trainer.recipes.genechat", "predict", "--model",
                           str(workdir / "checkpoints" / "final"), "--fasta", str(gene), "--beams", "2",
                           "--max-new-tokens", "8"], cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gene_id, _, text = proc.stdout.strip().partition("\t")
    assert gene_id == "7157" and text, proc.stdout


@pytest.mark.slow
def test_ptm_mamba_writes_test_metrics_and_metrics_json(reference_runs):
    import json

    _, workdir = reference_runs["ptm-mamba"]
    test = json.loads((workdir / "records" / "test_metrics.json").read_text())
    assert {"test_loss", "test_perplexity", "test_accuracy"} <= set(test)
    history = json.loads((workdir / "records" / "metrics.json").read_text())
    assert history[-1] == test and any("eval_loss" in h for h in history)
    mapping = json.loads((workdir / "records" / "split_mapping.json").read_text())
    assert set(mapping["splits"].values()) == {"train", "val", "test"}
    assert mapping["sizes"] == {"train": 250, "val": 30, "test": 20}
