"""The trainer as a process the tests start, pause, signal and kill; readers for what it leaves behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run-esm2.yaml"

MINIMAL_ESM2 = """\
apiVersion: helixrun.io/v1alpha1
kind: TrainingRun
metadata:
  name: esm2-test
spec:
  recipe: esm2-mlm
  model: {name: facebook/esm2_t33_650M_UR50D, method: full}
  data: {path: uniref50.fasta, format: fasta, maxSequenceLength: 512}
  hardware: {pool: a800, gpusPerNode: 8}
  training: {maxSteps: 500000, globalBatch: {tokens: 2000000}}
  checkpointing: {everySteps: 1000, keepLast: 5, keepBest: {metric: eval_perplexity, mode: min}}
  evaluation: {everySteps: 1000, metrics: [loss, perplexity]}
"""

# Generous: a hung trainer fails the test instead of hanging CI; never a performance threshold.
PROCESS_TIMEOUT = 400


def make_run_file(tmp_path_factory) -> Path:
    """examples/run-esm2.yaml when the lead's example exists, else a minimal equivalent."""
    if EXAMPLE.is_file():
        return EXAMPLE
    path = tmp_path_factory.mktemp("example") / "run-esm2.yaml"
    path.write_text(MINIMAL_ESM2)
    return path


def trainer_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELIXRUN_TEST_", "RANK", "WORLD_SIZE",
                                                                       "LOCAL_RANK", "MASTER_", "PET_"))}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def train_command(run_file: Path, workdir: Path, *sets: str, tiny: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "helixrun_trainer.cli", "--local", "-f", str(run_file), "--workdir", str(workdir),
           "--metrics-port", "0"]
    if tiny:
        cmd.append("--tiny")
    for s in sets:
        cmd += ["--set", s]
    return cmd


@dataclass
class Trainer:
    """A trainer process; stderr goes to a file the test can read while it runs."""

    proc: subprocess.Popen
    workdir: Path
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_until(self, what: str, ready: Callable[[], object]):
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not (result := ready()):
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited {self.proc.returncode} before {what}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"never {what}:\n{self.log[-3000:]}")
            time.sleep(0.02)
        return result

    def wait_for_file(self, path: Path) -> None:
        self._wait_until(f"{path.name} appeared", path.exists)

    def wait_for_log(self, pattern: str) -> re.Match:
        return self._wait_until(f"logging {pattern!r}", lambda: re.search(pattern, self.log))

    def wait_paused(self, step: int, phase: str, rank: int = 0) -> None:
        self.wait_for_file(self.workdir / "checkpoints" / f"PAUSED-{step}-{phase}-r{rank}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # it finished first: the caller sees its exit code
            pass
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"trainer did not exit:\n{self.log[-3000:]}")


def start_trainer(cmd: list[str], workdir: Path, *, pause: str | None = None, log_name: str = "trainer.log",
                  **env: str) -> Trainer:
    workdir.mkdir(parents=True, exist_ok=True)
    # Clear pause markers of an earlier process in the same workdir.
    for marker in (workdir / "checkpoints").glob("PAUSED-*") if (workdir / "checkpoints").is_dir() else []:
        marker.unlink()
    log_path = workdir / log_name
    extra = dict(env)
    if pause:
        extra["HELIXRUN_TEST_PAUSE"] = pause
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=trainer_env(**extra),
                            cwd=REPO, start_new_session=True)
    return Trainer(proc, workdir, log_path)


def losses(workdir: Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "records" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def final_weights(workdir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(workdir / "checkpoints" / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    import torch

    assert a.keys() == b.keys(), f"{what}: different tensors {sorted(a.keys() ^ b.keys())[:5]}"
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{what}: tensors differ bitwise: {differing[:5]}"


