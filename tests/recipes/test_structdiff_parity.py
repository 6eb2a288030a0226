"""StructDiff as its reference (cihebi2/StructDiff) builds and trains it, fact by fact.

Each test names the reference file it pins; docs/FIDELITY.md has the whole table."""

from __future__ import annotations

import pytest
import torch

from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes.structdiff import StructDiffRecipe, read_peptides
from helixrun_trainer.recipes.structdiff.metrics import peptide_scores
from helixrun_trainer.recipes.structdiff.model import NO_CLASS, betas_for
from helixrun_trainer.recipes.structdiff.structure import FEATURES
from tests.recipes.conftest import tiny_config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny StructDiff with its data; the output projection made non-zero (it starts at zero, as the
    reference's), so the denoiser's dependence on its inputs shows."""
    workdir = tmp_path_factory.mktemp("structdiff")
    cfg = tiny_config("structdiff", workdir)
    recipe = StructDiffRecipe()
    data = recipe.build_data(cfg, True, workdir)
    torch.manual_seed(0)
    model = recipe.build_model(cfg, True)
    with torch.no_grad():
        model.denoiser.out.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    return recipe, data, model.eval()


def noisy_input(batch, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, width = batch["input_ids"].shape
    return torch.randn((b, width, model.decoder.in_features), generator=gen), torch.full((b,), 500)


# -- noise schedule (structdiff/diffusion/noise_schedule.py) ------------------------------------------------------


def test_sqrt_schedule_is_the_references():
    betas = betas_for("sqrt", 1000, 1e-4, 0.02)
    assert torch.allclose(betas, torch.linspace(1e-4 ** 2, 0.02 ** 2, 1000, dtype=torch.float64).sqrt())
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert alpha_bar[500].item() == pytest.approx(0.00866, abs=2e-4), "ᾱ at T/2 (diffusers' scaled_linear: 0.33)"


# -- denoiser (structdiff/models/structdiff.py, denoise.py) -------------------------------------------------------


def test_denoiser_sees_positions(built):
    """Without a structure condition, permuting the noisy sequence must not just permute the prediction."""
    recipe, data, model = built
    batch = data.collate(data.train[:2], None)
    x_t, t = noisy_input(batch, model)
    null = model.null_structure.expand(*x_t.shape[:2], -1)
    classes = torch.full((2,), NO_CLASS)
    mask = torch.ones_like(batch["attention_mask"])
    perm = torch.randperm(x_t.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.denoiser(x_t, t, null, classes, mask)
        permuted = model.denoiser(x_t[:, perm], t, null, classes, mask)
    assert not torch.allclose(permuted, out[:, perm], atol=1e-4), "the denoiser is permutation-equivariant"


def test_peptide_class_changes_the_prediction(built):
    recipe, data, model = built
    batch = data.collate(data.train[:2], None)
    x_t, t = noisy_input(batch, model)
    cond = model.condition(batch["structure"], batch["attention_mask"])
    with torch.no_grad():
        by_class = [model.denoiser(x_t, t, cond, torch.full((2,), c), batch["attention_mask"]) for c in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(by_class[a], by_class[b]), f"classes {a} and {b} predict the same noise"


def test_untrained_denoiser_predicts_zero_noise(tmp_path):
    """The output projection starts at zero, so the ε-MSE starts at E[ε²] = 1 (the tiny run's chance level)."""
    cfg = tiny_config("structdiff", tmp_path)
    recipe = StructDiffRecipe()
    data = recipe.build_data(cfg, True, tmp_path)
    model = recipe.build_model(cfg, True).eval()
    batch = data.collate(data.train[:4], None)
    x_t, t = noisy_input(batch, model)
    cond = model.condition(batch["structure"], batch["attention_mask"])
    with torch.no_grad():
        assert not model.denoiser(x_t, t, cond, batch["class_ids"], batch["attention_mask"]).any()


@pytest.mark.parametrize("diffusion_trains_encoder", [False, True])
def test_epsilon_loss_reaches_the_sequence_encoder_only_when_asked(built, diffusion_trains_encoder):
    """separated_training.py, stage 1: sequence embeddings under no_grad; the decoder's CE still trains the LoRA."""
    recipe, data, model = built
    model.diffusion_trains_encoder = diffusion_trains_encoder
    try:
        batch = data.collate(data.train[:4], None)
        t, noise, drop_structure, _ = recipe.draws(model, batch, torch.Generator().manual_seed(0))
        model.zero_grad()
        mse, ce, _ = model(batch["input_ids"], batch["attention_mask"], batch["residue_mask"], batch["structure"],
                           batch["class_ids"], t, noise, drop_structure)
        encoder = [p for p in model.esm.parameters() if p.requires_grad]
        assert encoder, "the LoRA encoder has trainable weights"
        mse.backward(retain_graph=True)
        reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder)
        assert reached is diffusion_trains_encoder
        ce.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder), "CE should train the LoRA"
    finally:
        model.diffusion_trains_encoder = False
        model.zero_grad()


# -- sampling (structdiff/diffusion/sampling.py) -----------------------------------------------------------------


class Oracle(torch.nn.Module):
    """A denoiser that knows x0: its ε prediction is exact for every x_t; it remembers what it predicted."""

    def __init__(self, x0, alphas_bar):
        super().__init__()
        self.x0, self.alphas_bar, self.predicted = x0, alphas_bar, []

    def forward(self, x_t, t, cond, class_ids, mask):
        ab = self.alphas_bar[t].view(-1, 1, 1)
        self.predicted.append((x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt())
        return self.predicted[-1]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampler_follows_an_exact_denoiser_to_x0(built, sampler):
    """DDIM (η = 0) with exact ε moves along x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε for one ε, so every step
    predicts the same ε; DDPM draws fresh noise each step. Both end on x0."""
    recipe, data, model = built
    mask = torch.ones((3, 8), dtype=torch.long)
    x0 = torch.randn((3, 8, model.decoder.in_features), generator=torch.Generator().manual_seed(2))
    real, model.denoiser = model.denoiser, Oracle(x0, model.alphas_bar)
    try:
        out = model.sample(None, None, mask, torch.Generator().manual_seed(0), steps=20, sampler=sampler)
        predicted = model.denoiser.predicted
    finally:
        model.denoiser = real
    assert len(predicted) == 2 * 20  # conditioned and unconditioned branch per step
    assert torch.allclose(out, x0, atol=1e-3), (out - x0).abs().max()
    same_noise = all(torch.allclose(e, predicted[0], atol=1e-3) for e in predicted)
    assert same_noise is (sampler == "ddim")


def test_ddim_is_deterministic_and_differs_from_ddpm(built):
    recipe, data, model = built
    batch = data.collate(data.train[:3], None)
    args = (batch["structure"], batch["class_ids"], batch["attention_mask"])
    ddim = [model.sample(*args, torch.Generator().manual_seed(s), steps=10, sampler="ddim") for s in (0, 0)]
    ddpm = model.sample(*args, torch.Generator().manual_seed(0), steps=10, sampler="ddpm")
    assert torch.isfinite(ddim[0]).all() and ddim[0].shape == (3, batch["input_ids"].shape[1], 32)
    assert torch.equal(ddim[0], ddim[1]) and not torch.allclose(ddim[0], ddpm)


# -- data and evaluation (structdiff/data/dataset.py, structdiff/metrics/) ---------------------------------------


def test_peptide_classes_are_read_as_the_reference_labels_them(tmp_path):
    path = tmp_path / "peptides.csv"
    path.write_text("sequence,label\nGIGKFLKK,0\nKLLKLLKK,antifungal\nWEEWAKKA,Antiviral\nAKKAWEEW,\nGIGK,1\n")
    assert read_peptides(path, "sequence", "label", 5, 50, "raise") == [
        ("GIGKFLKK", 0), ("KLLKLLKK", 1), ("WEEWAKKA", 2), ("AKKAWEEW", NO_CLASS)]  # GIGK: shorter than 5
    path.write_text("sequence,label\nGIGKFLKK,0\nKLLKLLKK,antibacterial\n")
    with pytest.raises(DataError, match=r"peptides.csv:3: label 'antibacterial' is none of 0/1/2"):
        read_peptides(path, "sequence", "label", 5, 50, "raise")


def test_generated_peptide_scores_on_known_peptides():
    scores = peptide_scores(["KLLK", "KLLK", "KLAK", "KXLK", ""], training=["KLLK", "GIGK"])
    assert scores["validity"] == pytest.approx(3 / 5)  # X and the empty peptide are not peptides
    assert scores["uniqueness"] == pytest.approx(4 / 5)
    assert scores["novelty"] == pytest.approx(3 / 5)
    # pairwise normalised edit distances: KLLK-KLLK 0, KLLK-KLAK 1/4, KLLK-KXLK 1/4, KLAK-KXLK 2/4, x-"" 1
    pairs = [0, .25, .25, 1, .25, .25, 1, .5, 1, 1]
    assert scores["diversity"] == pytest.approx(sum(pairs) / len(pairs))
    # nearest training peptide: 0, 0, 1/4, 1/4, 1 away
    assert scores["training_similarity"] == pytest.approx(1 - (0 + 0 + .25 + .25 + 1) / 5)


def test_evaluation_scores_generated_peptides(built):
    recipe, data, model = built
    from helixrun_trainer.data import eval_batches

    recipe.generation = {"samples": 4, "steps": 5, "guidance": 1.5}
    with torch.no_grad():
        scores = recipe.evaluate(model, eval_batches(data.eval, data.collate, seed=0, lengths=None, max_tokens=None,
                                                     batch_size=4))
    assert {"loss", "mse", "recovery", "validity", "uniqueness", "diversity", "novelty",
            "training_similarity"} <= set(scores)


# -- it learns ---------------------------------------------------------------------------------------------------


def test_overfits_a_fixed_batch(tmp_path):
    """Loss (ε-MSE + decoder CE) on one fixed batch with fixed draws falls by 90% within a few hundred steps."""
    cfg = tiny_config("structdiff", tmp_path)
    recipe = StructDiffRecipe()
    data = recipe.build_data(cfg, True, tmp_path)
    torch.manual_seed(0)
    model = recipe.build_model(cfg, True).train()
    batch = data.collate(data.train[:4], None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    while len(losses) < 300 and (not losses or losses[-1] > 0.1 * losses[0]):
        loss = recipe.compute_loss(model, batch, torch.Generator().manual_seed(0)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"
