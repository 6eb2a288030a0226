"""Every recipe learns: it overfits a fixed small batch (what a shifted label, a wrong mask or a detached graph
breaks), and its tiny example learns the data it generates, ending at least halfway from chance to perfect on
the recipe's own evaluation metric."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helixrun_trainer.recipes import get_recipe

from tests.recipes.conftest import REPO, metrics, tiny_config

# recipe -> learning rate of the test's own AdamW (tiny models take large steps)
OVERFIT_LR = {
    "esm2-mlm": 3e-3,
    "genechat": 1e-2,  # LoRA on q/v with the frozen adapter, as the example trains
    "metagene-classification": 1e-2,
}


@pytest.mark.parametrize("recipe", sorted(OVERFIT_LR))
def test_the_recipe_overfits_a_fixed_small_batch(recipe, tmp_path):
    cfg = tiny_config(recipe, tmp_path)
    r = get_recipe(recipe)
    data = r.build_data(cfg, True, tmp_path / "data")
    torch.manual_seed(0)
    model = r.build_model(cfg, True)
    batch = data.collate([data.train[i] for i in range(8)], torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=OVERFIT_LR[recipe])
    model.train()
    losses: list[float] = []
    for step in range(300):
        out = r.compute_loss(model, batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss))
        if step >= 10 and sum(losses[-10:]) / 10 <= 0.1 * losses[0]:  # a mean over dropout's noise
            break
    recent = sum(losses[-10:]) / 10
    assert recent <= 0.1 * losses[0], f"{recipe}: loss {losses[0]:.3f} -> {recent:.3f} after {len(losses)} steps"


# example -> (its evaluation metric, chance, perfect): a tiny run must end at least halfway from chance to perfect
LEARNS = {
    "run-esm2.yaml": ("eval_perplexity", 20.0, 1.0),  # chance: uniform over the 20 amino acids
    "run-metagene-4090.yaml": ("eval_accuracy", 1 / 3, 1.0),  # three classes
}


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(LEARNS))
def test_the_tiny_example_learns_its_generated_data(example, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f", str(REPO / "examples" / example),
         "--workdir", str(tmp_path), "--tiny", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metric, chance, perfect = LEARNS[example]
    evals = [r[metric] for r in metrics(tmp_path) if metric in r]
    halfway = (chance + perfect) / 2
    reached = evals[-1] <= halfway if perfect < chance else evals[-1] >= halfway
    assert reached, f"{example}: {metric} over the run {evals}; halfway from chance {chance:.3f} is {halfway:.3f}"
