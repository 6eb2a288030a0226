"""The trainer as a process we kill: exact auto-resume, atomic checkpoints, SIGTERM, corrupt checkpoints."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest

from tests.cluster.controlplane import free_ports
from tests.trainer.harness import assert_bitwise_equal, final_weights, losses, start_trainer, train_command

from helixrun.metrics_contract import TRAINER_METRICS

TOTAL_STEPS = 40  # --tiny: 40 steps, a checkpoint every 5


def complete_steps(workdir) -> list[int]:
    return sorted(int(p.name[5:]) for p in (workdir / "checkpoints").glob("step-*")
                  if re.fullmatch(r"step-\d{8}", p.name) and (p / "COMPLETE").exists())


def resumed_step(log: str) -> int | None:
    m = re.search(r"resumed from \S+ \(step (\d+)\)", log)
    return int(m.group(1)) if m else None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def exported_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_answer_while_the_trainer_still_waits_for_its_peers(run_file, tmp_path):
    # Rank 0 of two, its peer never comes: it blocks in rendezvous, as a master waiting for its workers does.
    (master_port,) = free_ports(1)
    t = start_trainer(train_command(run_file, tmp_path), tmp_path, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port))
    try:
        port = int(t.wait_for_log(r"metrics on :(\d+)/metrics").group(1))
        text = scrape(port)
        assert "process group" not in t.log, "the trainer had already joined its group"
    finally:
        t.kill()
    assert 'helixrun_train_step{' in text and 'rank="0"' in text


@pytest.mark.slow
def test_metrics_endpoint_exports_every_documented_metric(run_file, tmp_path):
    t = start_trainer(train_command(run_file, tmp_path), tmp_path, pause="3:after-step")
    try:
        t.wait_paused(3, "after-step")
        port = int(re.search(r"metrics on :(\d+)/metrics", t.log).group(1))
        text = scrape(port)
        names = exported_names(text)
    finally:
        t.kill()
    missing = []
    for m in TRAINER_METRICS:
        if m.cuda_only:
            continue
        expected = {"counter": m.name + "_total", "histogram": m.name + "_count"}.get(m.kind, m.name)
        if expected not in names:
            missing.append(expected)
    assert not missing, f"/metrics lacks documented metrics: {missing}"
    step_line = next(line for line in text.splitlines() if line.startswith("helixrun_train_step{"))
    for label in ('run="esm2-', 'namespace="default"', 'rank="0"'):
        assert label in step_line, f"helixrun_train_step lacks label {label}: {step_line}"
    assert step_line.endswith(" 3.0"), f"step gauge should read 3 at the pause after step 3: {step_line}"


@pytest.mark.slow
def test_kill_anywhere_then_resume_is_bitwise_exact(run_file, reference_run, tmp_path):
    """SIGKILL after a step, mid-write of the rank parts, between COMPLETE and the committing rename;
    SIGTERM at a step; a corrupted newest checkpoint; a kill at an arbitrary moment: the per-step losses
    and the final weights equal an uninterrupted run's, bit for bit."""
    cmd = train_command(run_file, tmp_path)
    ckpts = tmp_path / "checkpoints"

    # 1. SIGKILL right after step 7 was logged (the last checkpoint is step 5).
    t = start_trainer(cmd, tmp_path, pause="7:after-step")
    t.wait_paused(7, "after-step")
    assert t.kill() == -signal.SIGKILL
    assert complete_steps(tmp_path) == [5]

    # 2. Resume; SIGKILL while step 15's files are being written: only a .tmp folder is left.
    t = start_trainer(cmd, tmp_path, pause="15:parts")
    t.wait_paused(15, "parts")
    t.kill()
    assert resumed_step(t.log) == 5, t.log[-2000:]
    assert (ckpts / "step-00000015.tmp").is_dir() and not (ckpts / "step-00000015").exists()

    # 3. Resume (the .tmp is discarded); SIGKILL after COMPLETE is written but before the rename commits.
    t = start_trainer(cmd, tmp_path, pause="20:commit")
    t.wait_paused(20, "commit")
    t.kill()
    assert resumed_step(t.log) == 10, t.log[-2000:]
    assert "removing incomplete checkpoint" in t.log
    assert (ckpts / "step-00000020.tmp" / "COMPLETE").exists() and 20 not in complete_steps(tmp_path)

    # 4. Resume from 20 (its .tmp verifies: committed at start); SIGTERM at step 23: the step in flight is
    #    checkpointed and the exit code is 143.
    t = start_trainer(cmd, tmp_path, pause="23:after-step")
    t.wait_paused(23, "after-step")
    assert t.kill(signal.SIGTERM) == 143, t.log[-2000:]
    assert resumed_step(t.log) == 20, t.log[-2000:]
    assert complete_steps(tmp_path)[-1] == 23
    assert not list(ckpts.glob("*.tmp")), "SIGTERM left a half-written checkpoint"
    manifest = json.loads((ckpts / "step-00000023" / "manifest.json").read_text())
    assert manifest["meta"]["reason"] == "preempted"

    # 5. Corrupt the newest checkpoint (one flipped byte): it is skipped with a warning, step 20 is used.
    shared = ckpts / "step-00000023" / "shared.pt"
    data = bytearray(shared.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shared.write_bytes(bytes(data))
    t = start_trainer(cmd, tmp_path, pause="31:after-step")
    t.wait_paused(31, "after-step")
    t.kill()
    assert "skipping checkpoint" in t.log and "step-00000023" in t.log
    assert resumed_step(t.log) == 20, t.log[-2000:]

    # 6. Resume and kill at whatever moment the run has reached once step 33 is logged (no pause).
    t = start_trainer(cmd, tmp_path)
    metrics = tmp_path / "records" / "metrics.jsonl"
    while t.proc.poll() is None and max(losses(tmp_path), default=0) < 33:
        time.sleep(0.005)  # polling interval, not a readiness guess
    t.kill()

    # 7. Run to the end.
    t = start_trainer(cmd, tmp_path)
    assert t.wait() == 0, t.log[-3000:]

    want, got = losses(reference_run), losses(tmp_path)
    assert sorted(got) == list(range(1, TOTAL_STEPS + 1)), f"metrics.jsonl steps: {sorted(got)}"
    diff = {s: (want[s], got[s]) for s in want if want[s] != got[s]}
    assert not diff, f"per-step losses differ after resumes (step: (uninterrupted, resumed)): {diff}"
    assert_bitwise_equal(final_weights(reference_run), final_weights(tmp_path), "final weights")
    assert metrics.exists()


@pytest.mark.slow
def test_sigterm_exits_143_with_checkpoint_at_step_in_flight(run_file, tmp_path):
    t = start_trainer(train_command(run_file, tmp_path), tmp_path, pause="2:after-step")
    t.wait_paused(2, "after-step")
    assert t.kill(signal.SIGTERM) == 143, t.log[-2000:]
    assert complete_steps(tmp_path) == [2]
    assert "exiting 143" in t.log


@pytest.mark.slow
def test_sigterm_before_an_evaluation_checkpoints_without_evaluating(run_file, tmp_path):
    """--tiny evaluates every 10 steps; the grace period is for the save, not for an evaluation."""
    t = start_trainer(train_command(run_file, tmp_path), tmp_path, pause="10:trained")
    t.wait_paused(10, "trained")
    assert t.kill(signal.SIGTERM) == 143, t.log[-2000:]
    assert complete_steps(tmp_path) == [5, 10]
    assert "eval at step 10" not in t.log
    manifest = json.loads((tmp_path / "checkpoints" / "step-00000010" / "manifest.json").read_text())
    assert manifest["meta"]["reason"] == "preempted" and manifest["metrics"] == {}


@pytest.mark.slow
def test_sigterm_while_the_last_async_save_writes_commits_it_then_a_restart_exports(run_file, tmp_path):
    cmd = train_command(run_file, tmp_path)
    t = start_trainer(cmd, tmp_path, pause=f"{TOTAL_STEPS}:parts", HELIXRUN_ASYNC_CHECKPOINT="1")
    t.wait_paused(TOTAL_STEPS, "parts")  # the loop is over; the writer of the last save is mid-write
    assert t.kill(signal.SIGTERM) == 143, t.log[-2000:]
    assert complete_steps(tmp_path)[-1] == TOTAL_STEPS
    assert not (tmp_path / "checkpoints" / "final").exists()
    t = start_trainer(cmd, tmp_path, HELIXRUN_ASYNC_CHECKPOINT="1")
    assert t.wait() == 0, t.log[-3000:]
    assert (tmp_path / "checkpoints" / "final").is_dir()


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_checkpoint_gauges_after_a_resume_describe_the_checkpoint_loaded(run_file, tmp_path):
    cmd = train_command(run_file, tmp_path)
    t = start_trainer(cmd, tmp_path, pause="2:after-step")
    t.wait_paused(2, "after-step")
    assert t.kill(signal.SIGTERM) == 143, t.log[-2000:]
    t = start_trainer(cmd, tmp_path, pause="3:after-step")  # resumed from 2; step 3 saves nothing
    try:
        t.wait_paused(3, "after-step")
        text = scrape(int(re.search(r"metrics on :(\d+)/metrics", t.log).group(1)))
    finally:
        t.kill()
    manifest = json.loads((tmp_path / "checkpoints" / "step-00000002" / "manifest.json").read_text())
    assert gauge(text, "helixrun_checkpoint_last_step") == 2
    assert gauge(text, "helixrun_checkpoint_last_timestamp_seconds") == manifest["created_unix"]
    assert gauge(text, "helixrun_checkpoint_size_bytes") == sum(f["bytes"] for f in manifest["files"].values())


@pytest.mark.slow
def test_async_save_and_prefetch_train_on_while_writing_and_a_kill_before_commit_resumes_exactly(run_file, reference_run,
                                                                                     tmp_path):
    cmd = train_command(run_file, tmp_path)
    # Prefetching (the GPU default) on too: it must change when batches are built, never what they hold.
    t = start_trainer(cmd, tmp_path, pause="15:parts", HELIXRUN_ASYNC_CHECKPOINT="1", HELIXRUN_PREFETCH="1")
    t.wait_paused(15, "parts")  # the writer thread of step 15 is stalled mid-write...
    while t.proc.poll() is None and max(losses(tmp_path), default=0) < 17:
        time.sleep(0.005)
    assert max(losses(tmp_path)) >= 17, "training did not continue while the checkpoint was being written"
    assert complete_steps(tmp_path) == [5, 10], "step 15 committed before its files were written"
    t.kill()
    t = start_trainer(cmd, tmp_path, HELIXRUN_ASYNC_CHECKPOINT="1", HELIXRUN_PREFETCH="1")
    assert t.wait() == 0, t.log[-3000:]
    assert resumed_step(t.log) == 10
    assert losses(tmp_path) == losses(reference_run)
    assert_bitwise_equal(final_weights(reference_run), final_weights(tmp_path), "final weights (async saves)")
