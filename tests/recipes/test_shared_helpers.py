"""Helpers the recipes share: the hash eval split (the same records held out every run, about the asked fraction
of them) and atomic writes of files every rank writes."""

from __future__ import annotations

import multiprocessing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helixrun_trainer.files import write_atomically
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


def _write_a_in_two_halves(path, halfway, go_on):
    def write(staging):
        with open(staging, "w") as handle:
            handle.write("first half of A, ")
            handle.flush()
            halfway.set()
            go_on.wait()
            handle.write("second half of A")

    write_atomically(path, write)


def test_two_processes_writing_one_file_at_once_each_leave_a_whole_one(tmp_path):
    """As two ranks of a tiny run saving the same tokenizer: B writes its whole file while A is half-way."""
    fork = multiprocessing.get_context("fork")
    path = tmp_path / "tokenizer.json"
    halfway, go_on = fork.Event(), fork.Event()
    a = fork.Process(target=_write_a_in_two_halves, args=(path, halfway, go_on))
    a.start()
    try:
        assert halfway.wait(timeout=120), "process A never started writing"
        write_atomically(path, lambda staging: staging.write_text("all of B"))
        assert path.read_text() == "all of B"
    finally:
        go_on.set()
        a.join(timeout=120)
    assert a.exitcode == 0
    assert path.read_text() == "first half of A, second half of A"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"], "a staging file was left behind"
