"""ESM-2 as published (Lin et al. 2023, appendix A.1) and as BioNeMo trains it: fresh or released weights by
model.init, decoupled weight decay, WarmupAnnealDecayHold, 80/10/10 masking with random tokens from the whole
alphabet, and UniRef50 clusters each visited once an epoch with a UniRef90 member drawn uniformly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from scipy.stats import chisquare

from helixrun import api, pools, resolve
from helixrun_trainer.data import BatchOrder, StepBatches
from helixrun_trainer.errors import DataError
from helixrun_trainer.optim import build_optimizer, build_scheduler, lr_at, schedule_kwargs
from helixrun_trainer.recipes import get_recipe
from helixrun_trainer.recipes.esm2_mlm import CLS, EOS, ESM_ALPHABET, MASK, TOKEN_ID, mask_tokens

from tests.recipes.conftest import REPO

EXAMPLE = REPO / "examples" / "run-esm2.yaml"


def example_config(workdir: Path, **spec_changes):
    """examples/run-esm2.yaml resolved for a local run in workdir, with spec fields replaced."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    for path, value in spec_changes.items():
        obj = resolve.apply_set(obj, f"{path.replace('__', '.')}={value}")
    return resolve.resolve(api.TrainingRun.from_object(obj), pools.load_pools(None), resolve.local_paths(workdir))


def released_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny EsmForMaskedLM saved as a release would be (the real ones cannot be downloaded here)."""
    torch.manual_seed(1)
    model = get_recipe("esm2-mlm").build_model(None, True)
    model.save_pretrained(str(folder))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_scratch_init_draws_fresh_weights_and_pretrained_init_loads_the_release(tmp_path):
    release = tmp_path / "esm2-release"
    saved = released_weights(release)
    recipe = get_recipe("esm2-mlm")
    torch.manual_seed(2)
    fresh = recipe.build_model(example_config(tmp_path / "a", model__name=release, model__init="scratch"), False)
    loaded = recipe.build_model(example_config(tmp_path / "b", model__name=release, model__init="pretrained"), False)
    fresh, loaded = fresh.state_dict(), loaded.state_dict()
    assert fresh.keys() == saved.keys(), "scratch builds the release's architecture"
    assert all(torch.equal(loaded[k], saved[k]) for k in saved), "pretrained init is the released weights"
    trained = [k for k in saved if k.endswith(".weight") and "LayerNorm" not in k and "layer_norm" not in k]
    same = [k for k in trained if torch.equal(fresh[k], saved[k])]
    assert not same, f"scratch init kept released weights: {same}"


def test_the_example_pretrains_from_scratch_and_records_it(tmp_path):
    cfg = example_config(tmp_path)
    assert cfg.spec["model"]["init"] == "scratch" and cfg.plan.init == "scratch"
    assert "init: scratch" in cfg.to_yaml(), "the resolved config (records/config.yaml) says where weights start"


def test_a_recipe_refuses_an_init_its_builder_does_not_honour(tmp_path):
    obj = yaml.safe_load((REPO / "examples" / "run-ptm-mamba.yaml").read_text())
    obj = resolve.apply_set(obj, "model.init=pretrained")
    with pytest.raises(api.InvalidRun, match="spec.model.init: recipe ptm-mamba trains from scratch weights"):
        resolve.resolve(api.TrainingRun.from_object(obj), pools.load_pools(None), resolve.local_paths(tmp_path))


def test_a_zero_gradient_adamw_step_scales_weights_by_exactly_one_minus_lr_times_wd(tmp_path):
    training = example_config(tmp_path).typed_spec.training
    weights = torch.nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
    before = weights.detach().clone()
    optimizer = build_optimizer([weights], training)
    lr, wd = training.optimizer.lr, training.optimizer.weight_decay
    assert (lr, wd) == (4e-4, 0.01)
    weights.grad = torch.zeros_like(weights)
    optimizer.step()
    assert torch.equal(weights.detach(), before * (1 - lr * wd)), "weight decay is not decoupled (AdamW)"


def test_adam_with_weight_decay_is_refused_as_coupled_l2(tmp_path):
    with pytest.raises(api.InvalidRun, match="weightDecay: optimizer adam would add weightDecay"):
        example_config(tmp_path, training__optimizer__name="adam")


def test_the_learning_rate_at_named_steps_is_warmup_anneal_decay_hold(tmp_path):
    steps = 500_000
    kwargs = schedule_kwargs(example_config(tmp_path).typed_spec.training, steps)
    peak, floor = 4e-4, 4e-5
    # BioNeMo's WarmupAnnealDecayHold(warmup 2000, max_steps 500k, min_lr 0, anneal 0.1), at its step index
    expected = {
        0: 0.0,
        1000: peak / 2,
        2000: peak,
        250_000: peak * (1 - 248_000 / 498_000),
        450_000: peak * (1 - 448_000 / 498_000),  # 90% of training: just above the floor
        450_200: floor,  # 2000 + 0.9 * 498,000: a tenth of the peak
        475_000: floor,
        steps - 1: floor,  # held to the end
    }
    for step, lr in expected.items():
        assert lr_at(step, **kwargs) == pytest.approx(lr, rel=1e-12, abs=1e-18), f"step {step}"
    scheduler = build_scheduler(build_optimizer([torch.nn.Parameter(torch.zeros(1))], example_config(tmp_path)
                                                .typed_spec.training), kwargs)
    assert scheduler.get_last_lr()[0] == 0.0, "the first update is taken at step 0's rate"
    assert scheduler.lr_lambdas[0](450_200) * peak == pytest.approx(floor, rel=1e-12)


def test_masking_is_80_10_10_with_random_tokens_drawn_from_the_whole_alphabet():
    residue = TOKEN_ID["L"]
    ids = torch.full((400, 1002), residue)
    ids[:, 0], ids[:, -1] = CLS, EOS
    special = (ids == CLS) | (ids == EOS)
    inputs, labels = mask_tokens(ids, special, torch.Generator().manual_seed(0), 0.15)
    selected = labels != -100
    n = int(selected.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.003
    masked = int(((inputs == MASK) & selected).sum()) / n
    unchanged = int(((inputs == residue) & selected).sum()) / n
    replaced = inputs[selected & (inputs != MASK) & (inputs != residue)]
    # A random draw of the original token reads as unchanged, one of <mask> as masked: each takes 10%/33.
    assert abs(masked - (0.8 + 0.1 / 33)) < 0.006 and abs(unchanged - (0.1 + 0.1 / 33)) < 0.004
    assert abs(len(replaced) / n - 0.1 * 31 / 33) < 0.004
    counts = Counter(replaced.tolist())
    others = [i for i in range(len(ESM_ALPHABET)) if i not in (residue, MASK)]
    assert sorted(counts) == others, "random replacements come from every token of the alphabet"
    # Uniform over those 31 tokens; a fixed seed makes this deterministic.
    assert chisquare([counts[i] for i in others]).pvalue > 1e-3
    assert torch.equal(labels[selected], ids[selected])


def write_clusters(tmp_path: Path, sizes: list[int]) -> tuple[Path, Path, dict[str, tuple[str, str]]]:
    """A FASTA of distinct proteins and a membership file: cluster c has sizes[c] members."""
    import random

    rng = random.Random(0)
    fasta, members, owner = [], [], {}
    for c, size in enumerate(sizes):
        for m in range(size):
            seq = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(30))
            rid = f"UniRef90_C{c}M{m}"
            fasta.append(f">{rid}\n{seq}\n")
            members.append(f"UniRef50_C{c}\t{rid}\n")
            owner[seq] = (f"UniRef50_C{c}", rid)
    (tmp_path / "uniref90.fasta").write_text("".join(fasta))
    (tmp_path / "members.tsv").write_text("# UniRef50 cluster, UniRef90 member\n" + "".join(members))
    return tmp_path / "uniref90.fasta", tmp_path / "members.tsv", owner


def cluster_config(tmp_path: Path, fasta: Path, members: Path):
    return example_config(tmp_path / "run", data__path=fasta, data__options__clusters=members,
                          data__options__evalFraction=0)


def test_each_epoch_visits_every_cluster_once_and_draws_its_members_uniformly(tmp_path):
    sizes = [1, 2, 5, 50]
    fasta, members, owner = write_clusters(tmp_path, sizes)
    cfg = cluster_config(tmp_path, fasta, members)
    data = get_recipe("esm2-mlm").build_data(cfg, False, tmp_path)
    assert len(data.train) == len(sizes) and data.eval is None
    # The runtime's own batch order and generators: one step is one epoch of four clusters.
    order = BatchOrder(len(data.train), seed=42, batch_size=len(sizes))
    batches = StepBatches(order, data.train, data.collate, seed=42, grad_accum=1, world_size=1, rank=0)
    epochs = 2000
    clusters, draws = Counter(), Counter()
    for step in range(epochs):
        for batch, _ in batches.for_step(step):
            tokens = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
            for row in tokens.tolist():
                seq = "".join(ESM_ALPHABET[t] for t in row if t not in (CLS, EOS, 1))
                cluster, member = owner[seq]
                clusters[cluster] += 1
                draws[member] += 1
    # Uniform over clusters: each one exactly once an epoch, whatever its size (a sequence-level sampler would
    # visit the 50-member cluster 50 times as often as the singleton).
    assert clusters == {f"UniRef50_C{c}": epochs for c in range(len(sizes))}
    # Uniform within a cluster: the fixed seed makes these chi-square tests deterministic.
    for c, size in enumerate(sizes[1:], 1):
        counts = [draws[f"UniRef90_C{c}M{m}"] for m in range(size)]
        assert min(counts) > 0 and chisquare(counts).pvalue > 1e-3, (c, counts)


def test_held_out_clusters_evaluate_on_their_first_listed_member(tmp_path):
    fasta, members, owner = write_clusters(tmp_path, [3] * 40)
    cfg = example_config(tmp_path / "run", data__path=fasta, data__options__clusters=members,
                         data__options__evalFraction=0.25)
    data = get_recipe("esm2-mlm").build_data(cfg, False, tmp_path)
    held_out = set(data.split_mapping["eval_cluster_ids"])
    assert 0 < len(held_out) < 40 and len(data.train) + len(held_out) == 40
    first = {cluster: seq for seq, (cluster, rid) in owner.items() if rid.endswith("M0")}
    evaluated = {"".join(ESM_ALPHABET[t] for t in data.eval[i][1:-1]) for i in range(len(data.eval))}
    assert evaluated == {first[c] for c in held_out}


@pytest.mark.parametrize("line, problem", [
    ("UniRef50_X\tUniRef90_missing\n", r"members.tsv:3: member 'UniRef90_missing' of cluster 'UniRef50_X' is not"),
    ("UniRef50_X\n", r"members.tsv:3: expected two columns"),
    ("UniRef50_X\tUniRef90_C0M0\n", r"members.tsv:3: member 'UniRef90_C0M0' is already in cluster 'UniRef50_C0'"),
])
def test_a_bad_membership_line_names_the_file_and_line(tmp_path, line, problem):
    fasta, members, _ = write_clusters(tmp_path, [1])
    members.write_text(members.read_text() + line)
    with pytest.raises(DataError, match=problem):
        get_recipe("esm2-mlm").build_data(cluster_config(tmp_path, fasta, members), False, tmp_path)
