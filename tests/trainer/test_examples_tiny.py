"""Every example TrainingRun trains locally with --tiny: the path README's `make demo` takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("run-*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_checkpoints_and_exports_with_tiny(example, tmp_path):
    steps = 3
    result = subprocess.run(
        [sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f", str(example), "--workdir", str(tmp_path),
         "--tiny", "--metrics-port", "0", "--set", f"training.maxSteps={steps}",
         "--set", f"checkpointing.everySteps={steps}", "--set", f"evaluation.everySteps={steps}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "records" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert any(key.startswith("eval_") for key in records[-1])
    assert (tmp_path / "checkpoints" / f"step-{steps:08d}").is_dir()
    assert any((tmp_path / "checkpoints" / "final").iterdir())
