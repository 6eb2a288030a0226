"""Learning-rate schedules against hand-computed values, and their checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch

from helixrun_trainer.optim import build_scheduler, lr_at


def kw(**over):
    base = dict(lr=1.0, total_steps=10, warmup_steps=4)
    base.update(over)
    return base


@pytest.mark.parametrize("step, want", [(0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0),
                                        (6, 0.5 * (1 + math.cos(math.pi * 0.4))), (9, 0.0)])
def test_warmup_then_cosine_to_min_lr(step, want):
    assert lr_at(step, **kw(name="cosine")) == pytest.approx(want, abs=1e-12)


def test_cosine_ends_at_min_lr():
    assert lr_at(9, **kw(name="cosine", min_lr=0.1)) == pytest.approx(0.1)
    assert lr_at(4, **kw(name="cosine", min_lr=0.1)) == pytest.approx(1.0)


@pytest.mark.parametrize("step, want", [(0, 0.25), (4, 1.0), (6, 0.64), (9, 0.1)])
def test_warmup_then_linear_to_final_fraction(step, want):
    assert lr_at(step, **kw(name="linear", final_lr_fraction=0.1)) == pytest.approx(want)


@pytest.mark.parametrize("step, want", [(0, 0.25), (3, 1.0), (5, 1.0), (9, 1.0)])
def test_constant_after_warmup(step, want):
    assert lr_at(step, **kw(name="constant")) == pytest.approx(want)


def test_no_warmup_starts_at_peak():
    assert lr_at(0, lr=2e-4, total_steps=100, name="cosine") == pytest.approx(2e-4)


def test_scheduler_follows_lr_at_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, kw(name="linear", final_lr_fraction=0.1))
    seen = []
    for step in range(5):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **kw(name="linear", final_lr_fraction=0.1)) for s in range(5)])
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = build_scheduler(opt2, kw(name="linear", final_lr_fraction=0.1))
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == pytest.approx([lr_at(6, **kw(name="linear", final_lr_fraction=0.1))])


def test_warmup_starts_at_warmup_start_lr():
    assert lr_at(0, **kw(name="cosine", warmup_start_lr=0.2)) == pytest.approx(0.2 + 0.8 * 1 / 4)
    assert lr_at(3, **kw(name="cosine", warmup_start_lr=0.2)) == pytest.approx(1.0)


def test_decay_steps_stretch_the_decay_past_the_last_step():
    """A run stopped early keeps the longer schedule's curve: at step 6 of a cosine aimed at step 104,
    the rate has barely moved."""
    stretched = lr_at(6, **kw(name="cosine", decay_end=104))
    assert stretched == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 99)))
    assert lr_at(103, **kw(name="cosine", decay_end=104, total_steps=200, min_lr=0.1)) == pytest.approx(0.1)
