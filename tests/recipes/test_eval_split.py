"""The hash split the recipes share: the same records held out every run, about the asked fraction of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helixrun_trainer.recipes.base import in_eval_split

KEYS = [f"read{i}" for i in range(2000)]
fractions = st.floats(min_value=0.0, max_value=1.0)


@given(fractions)
def test_about_the_fraction_is_held_out(fraction):
    held_out = sum(in_eval_split(key, fraction) for key in KEYS) / len(KEYS)
    assert abs(held_out - fraction) < 0.05


@given(st.text(), fractions, fractions)
def test_a_record_held_out_stays_held_out_with_a_larger_fraction(key, a, b):
    small, large = sorted((a, b))
    assert not in_eval_split(key, small) or in_eval_split(key, large)


# Pinned: a change of hash or rule would move records between train and eval in runs already made.
@pytest.mark.parametrize("key, fraction, held_out", [
    ("tiny_00000", 0.05, True), ("tiny_00000", 0.03, False),
    ("tiny_00001", 0.45, True), ("tiny_00001", 0.44, False), ("KLLKGIGK", 0.1, False),
])
def test_the_split_is_the_same_every_run(key, fraction, held_out):
    assert in_eval_split(key, fraction) is held_out
