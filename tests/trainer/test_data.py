"""Batch order: token budgets never drop a sequence; the position is resumable; draws are reproducible."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helixrun_trainer.data import BatchOrder, StepBatches, token_budget_batches


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=200),
       st.integers(min_value=1, max_value=1000))
def test_token_budget_keeps_every_sequence_once_and_respects_the_budget(lengths, budget):
    batches = token_budget_batches(lengths, budget)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths))), "a sequence was dropped or duplicated"
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= budget or len(b) == 1, f"batch {b} pads to {padded} > {budget}"


def test_sequence_longer_than_budget_gets_its_own_batch():
    assert token_budget_batches([10, 500, 10], 100) == [[0, 2], [1]]


def test_epoch_order_is_a_function_of_seed_and_epoch():
    lengths = [5 + (i * 7) % 40 for i in range(100)]
    a = BatchOrder(100, 42, lengths=lengths, max_tokens=64)
    b = BatchOrder(100, 42, lengths=lengths, max_tokens=64)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert sorted(map(sorted, a.epoch_batches(0))) == sorted(map(sorted, a.epoch_batches(1)))
    assert BatchOrder(100, 43, lengths=lengths, max_tokens=64).epoch_batches(0) != a.epoch_batches(0)


def test_sample_batches_cover_the_epoch_without_dropping_the_short_last_batch():
    order = BatchOrder(10, 1, batch_size=4)
    assert len(order) == 3
    assert sorted(i for b in order.epoch_batches(0) for i in b) == list(range(10))


def collate(samples, generator):
    return {"ids": torch.tensor(samples), "noise": torch.rand(len(samples), generator=generator)}


def step_batches(rank=0, world=1, accum=2):
    order = BatchOrder(23, 7, batch_size=3)
    return StepBatches(order, list(range(23)), collate, seed=7, grad_accum=accum, world_size=world, rank=rank)


def flatten(step_iter):
    return [(b["ids"].tolist(), b["noise"].tolist(), torch.rand(1, generator=g).item()) for b, g in step_iter]


def test_resuming_at_a_step_reproduces_batches_and_draws():
    uninterrupted = [flatten(step_batches().for_step(s)) for s in range(12)]  # crosses epochs (8 batches/epoch)
    resumed = step_batches()  # a fresh process: only the step is known
    assert [flatten(resumed.for_step(s)) for s in range(5, 12)] == uninterrupted[5:]


def test_ranks_split_each_step_without_overlap():
    for step in range(6):
        seen = []
        for rank in range(2):
            seen += [tuple(b["ids"].tolist()) for b, _ in step_batches(rank, 2).for_step(step)]
        single = [tuple(b["ids"].tolist()) for b, _ in step_batches(0, 1, accum=4).for_step(step)]
        assert sorted(seen) == sorted(single), "2 ranks x 2 slots must read what 1 rank x 4 slots reads"


def test_check_state_names_what_would_make_a_resume_inexact():
    state = step_batches().state_dict(5)
    assert step_batches().check_state(state) == []
    problems = step_batches(world=2).check_state(state)
    assert any(p.startswith("world_size") for p in problems)


def test_prefetch_yields_exactly_what_step_batches_yields_in_any_order():
    from helixrun_trainer.data import Prefetch

    prefetch = Prefetch(step_batches(), last_step=12)
    try:
        for step in [0, 1, 2, 5, 6, 3, 11]:  # sequential (prefetched) and jumps (loaded on demand)
            assert flatten(prefetch.for_step(step)) == flatten(step_batches().for_step(step))
    finally:
        prefetch.close()
