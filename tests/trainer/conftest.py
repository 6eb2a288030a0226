"""Fixtures for the trainer tests: the tiny esm2-mlm run file and one uninterrupted reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.harness import make_run_file, start_trainer, train_command


@pytest.fixture(scope="session")
def run_file(tmp_path_factory) -> Path:
    return make_run_file(tmp_path_factory)


@pytest.fixture(scope="session")
def reference_run(run_file, tmp_path_factory) -> Path:
    """One uninterrupted tiny run: the losses and weights every interrupted run must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    t = start_trainer(train_command(run_file, workdir), workdir)
    code = t.wait()
    assert code == 0, f"reference run failed ({code}):\n{t.log[-3000:]}"
    return workdir
