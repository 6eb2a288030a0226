"""Every recipe can learn: on a fixed small batch its loss falls by 90% within a few hundred CPU steps (what a
shifted label, a wrong mask or a detached graph breaks). Tiny examples learning their generated data:
test_tiny_examples_learn.py."""

from __future__ import annotations

import pytest
import torch

from helixrun_trainer.recipes import get_recipe

from tests.recipes.conftest import tiny_config

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
