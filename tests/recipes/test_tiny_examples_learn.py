"""The tiny examples learn their generated data: `helixrun-train --local -f examples/run-<recipe>.yaml --tiny` ends
at least halfway from chance to perfect on the recipe's own eval metric.

- PTM-Mamba: masked-token accuracy; chance is the best constant guess, the most frequent target among the
  eval split's masked positions (at the evaluation's own draws).
- StructDiff: the ε-MSE; chance is the untrained denoiser's 1.0 (its output starts at zero, so it predicts
  ε̂ = 0 and scores E[ε²] = 1; test_structdiff_parity pins that), perfect is 0.
- ESM-2: masked-residue perplexity; chance is a uniform guess over the 20 amino acids (20), perfect 1. The tiny
  proteins are low-complexity (five residues): their composition is what 40 steps can learn (docs/FIDELITY.md).
- METAGENE-1: read classification accuracy over three balanced classes; chance 1/3."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recipes.conftest import REPO
from tests.trainer.harness import trainer_env


def tiny_example_run(recipe: str, workdir: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f",
                           str(REPO / "examples" / f"run-{recipe}.yaml"), "--workdir", str(workdir), "--tiny",
                           "--metrics-port", "0"], cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "records" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "eval_loss" in r]


def masked_target_majority(workdir: Path) -> float:
    """The accuracy of always guessing the most frequent target, over the batches the run evaluated on."""
    from helixrun.resolve import ResolvedRun
    from helixrun_trainer.data import eval_batches
    from helixrun_trainer.recipes.ptm_mamba import PTMMambaRecipe

    cfg = ResolvedRun.from_yaml((workdir / "config.yaml").read_text())
    data = PTMMambaRecipe().build_data(cfg, True, workdir / "data")
    counts = collections.Counter()
    for batch in eval_batches(data.eval, data.collate, seed=cfg.spec["training"]["seed"], lengths=data.eval_lengths,
                              max_tokens=cfg.plan.micro_batch_tokens, batch_size=cfg.plan.micro_batch):
        counts.update(batch["labels"][batch["labels"] != -100].tolist())
    return max(counts.values()) / sum(counts.values())


@pytest.mark.slow
def test_ptm_mamba_tiny_example_learns_masked_tokens(tmp_path):
    final = tiny_example_run("ptm-mamba", tmp_path)[-1]
    chance = masked_target_majority(tmp_path)
    assert final["eval_accuracy"] >= (chance + 1) / 2, (
        f"masked-token accuracy {final['eval_accuracy']:.3f} at step {final['step']}, chance {chance:.3f}")


@pytest.mark.slow
def test_structdiff_tiny_example_learns_to_denoise(tmp_path):
    evals = tiny_example_run("structdiff", tmp_path)
    assert evals[-1]["eval_mse"] <= 0.5, f"ε-MSE {[round(r['eval_mse'], 3) for r in evals]} (untrained: 1.0)"
    assert {"eval_validity", "eval_diversity", "eval_novelty"} <= set(evals[-1]), "generated peptides not scored"


@pytest.mark.slow
def test_esm2_tiny_example_learns_masked_residues(tmp_path):
    evals = tiny_example_run("esm2", tmp_path)
    assert evals[-1]["eval_perplexity"] <= (20 + 1) / 2, f"perplexity {[round(r['eval_perplexity'], 2) for r in evals]}"


@pytest.mark.slow
def test_metagene_tiny_example_classifies_reads(tmp_path):
    evals = tiny_example_run("metagene-4090", tmp_path)
    assert evals[-1]["eval_accuracy"] >= (1 / 3 + 1) / 2, f"accuracy {[round(r['eval_accuracy'], 3) for r in evals]}"
