"""StructDiff sampling from an export: unconditional samples come from the learned null structure."""

from __future__ import annotations

import pytest
import torch

from helixrun_trainer.recipes.structdiff import StructDiffRecipe
from helixrun_trainer.recipes.structdiff.__main__ import load, sample
from helixrun_trainer.recipes.structdiff.structure import FEATURES
from tests.recipes.conftest import tiny_config

TEMPLATE = "KLLKGIGKF"  # a --like peptide as long as the unconditional samples below
NUM, SEED = 3, 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny StructDiff's final/ export whose null structure and output are learned-looking, not their zero init."""
    workdir = tmp_path_factory.mktemp("structdiff")
    cfg = tiny_config("structdiff", workdir)
    recipe = StructDiffRecipe()
    recipe.build_data(cfg, True, workdir)
    model = recipe.build_model(cfg, True)
    with torch.no_grad():  # the output projection starts at zero: a denoiser that ignored its input would pass
        gen = torch.Generator().manual_seed(SEED)
        model.null_structure.normal_(generator=gen)
        model.denoiser.out.weight.normal_(std=0.1, generator=gen)
    recipe.export(model, cfg, workdir / "final")
    return workdir / "final"


def test_unconditional_sampling_is_sampling_from_the_null_structure(model_dir):
    # With guidance 0 only the null-condition branch counts, whatever structure the template gives.
    unconditional = sample(model_dir, NUM, len(TEMPLATE), None, SEED, guidance=1.5, steps=50, use_ema=False)
    null_only = sample(model_dir, NUM, len(TEMPLATE), [TEMPLATE], SEED, guidance=0.0, steps=50, use_ema=False)
    assert unconditional == null_only


def test_unconditional_sampling_is_not_conditioned_on_an_all_zero_structure(model_dir):
    model, _ = load(model_dir)
    mask = torch.ones((NUM, len(TEMPLATE) + 2), dtype=torch.long)
    zero_structure = torch.zeros((*mask.shape, FEATURES))
    unconditional = model.sample(None, None, mask, torch.Generator().manual_seed(SEED), steps=50)
    on_zero_structure = model.sample(zero_structure, None, mask, torch.Generator().manual_seed(SEED), steps=50)
    assert not torch.equal(unconditional, on_zero_structure)
