"""The checkpoint manager on its own: commit protocol, verification, retention, resumeFrom."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helixrun_trainer.checkpoint import (
    CheckpointInfo, CheckpointManager, CorruptCheckpoint, committed, newest_valid, to_keep, verify,
)
from helixrun_trainer.distributed import DistEnv


def manager(root, **kw) -> CheckpointManager:
    return CheckpointManager(root, DistEnv(), **kw)


def save(m: CheckpointManager, step: int, metrics: dict | None = None, payload: float | None = None) -> None:
    value = torch.full((4,), float(step if payload is None else payload))
    m.save(step, shared=lambda: {"model": {"w": value}, "step": step}, part={"rng": torch.get_rng_state()},
           metrics=metrics or {})


def steps(root) -> list[int]:
    return [c.step for c in committed(root)]


def info(step: int, **metrics) -> CheckpointInfo:
    return CheckpointInfo(path=None, step=step, manifest={"metrics": metrics})


def test_save_commits_a_verified_step_folder_and_load_round_trips(tmp_path):
    m = manager(tmp_path, keep_last=3)
    save(m, 5, {"eval_loss": 1.5})
    folder = tmp_path / "step-00000005"
    assert folder.is_dir() and not list(tmp_path.glob("*.tmp"))
    checked = verify(folder)
    assert checked.step == 5 and checked.metrics == {"eval_loss": 1.5}
    assert set(checked.manifest["files"]) == {"shared.pt", "rank-00000.pt"}
    for name, meta in checked.manifest["files"].items():
        assert (folder / name).stat().st_size == meta["bytes"]
    shared, part = m.load(checked)
    assert torch.equal(shared["model"]["w"], torch.full((4,), 5.0))
    assert part is not None and "rng" in part
    assert (tmp_path / "latest").read_text().strip() == "step-00000005"


def test_keep_last_n():
    assert to_keep([info(s) for s in (5, 10, 15, 20)], keep_last=2) == {15, 20}


def test_keep_best_by_min_and_max_metric():
    cks = [info(5, eval_loss=3.0), info(10, eval_loss=1.0), info(15, eval_loss=2.0), info(20)]
    assert to_keep(cks, keep_last=1, best_metric="eval_loss", best_mode="min") == {10, 20}
    assert to_keep(cks, keep_last=1, best_metric="eval_loss", best_mode="max") == {5, 20}


def test_best_tie_keeps_the_first_step_that_reached_it():
    cks = [info(5, f1=0.9), info(10, f1=0.9), info(15, f1=0.1), info(20, f1=0.2)]
    assert to_keep(cks, keep_last=1, best_metric="f1", best_mode="max") == {5, 20}


def test_nan_best_metric_does_not_compete_for_best():
    cks = [info(5, eval_loss=float("nan")), info(10, eval_loss=2.0), info(15, eval_loss=1.0), info(20)]
    assert to_keep(cks, keep_last=1, best_metric="eval_loss", best_mode="min") == {15, 20}
    assert to_keep(cks, keep_last=1, best_metric="eval_loss", best_mode="max") == {10, 20}


def test_commits_go_on_after_a_nan_evaluation(tmp_path):
    m = manager(tmp_path, keep_last=1, best_metric="eval_loss", best_mode="min")
    for step, loss in ((1, float("nan")), (2, 3.0), (3, 1.0), (4, 2.0)):
        save(m, step, {"eval_loss": loss})
    assert steps(tmp_path) == [3, 4]


def test_archive_every_k_is_kept_forever():
    cks = [info(s) for s in range(5, 55, 5)]
    assert to_keep(cks, keep_last=1, archive_every=20) == {20, 40, 50}


def test_newest_is_always_kept_even_with_keep_last_zero():
    assert to_keep([info(5), info(10)], keep_last=0) == {10}


def test_retention_runs_on_commit(tmp_path):
    m = manager(tmp_path, keep_last=2, best_metric="eval_loss", best_mode="min")
    for step, loss in ((1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, 2.0)):
        save(m, step, {"eval_loss": loss})
    assert steps(tmp_path) == [2, 4, 5]
    assert not list(tmp_path.glob("*.deleting"))


def test_retention_never_deletes_newest_complete_while_a_newer_one_is_in_flight(tmp_path):
    m = manager(tmp_path, keep_last=1)
    save(m, 5)
    (tmp_path / "step-00000010.tmp").mkdir()  # a save in flight (another writer, or the async thread)
    (tmp_path / "step-00000010.tmp" / "shared.pt").write_bytes(b"partial")
    m.apply_retention()
    assert steps(tmp_path) == [5]
    assert newest_valid(tmp_path).step == 5


def flip_a_byte(checkpoint) -> None:
    shared = checkpoint / "shared.pt"
    data = bytearray(shared.read_bytes())
    data[100] ^= 0x01
    shared.write_bytes(bytes(data))


def test_retention_keeps_the_save_just_made_even_when_a_newer_folder_outranks_it(tmp_path):
    save(manager(tmp_path), 20)  # e.g. copied in from elsewhere; this manager never loaded it
    m = manager(tmp_path, keep_last=1)
    save(m, 5)
    assert 5 in steps(tmp_path)
    save(m, 6)
    assert steps(tmp_path) == [6, 20]


def test_resume_sets_aside_damaged_newer_checkpoints_and_new_saves_survive(tmp_path, caplog):
    m = manager(tmp_path, keep_last=1)
    save(m, 4)
    first = manager(tmp_path, keep_last=5)
    save(first, 10)
    save(first, 20)
    flip_a_byte(tmp_path / "step-00000010")
    flip_a_byte(tmp_path / "step-00000020")
    restarted = manager(tmp_path, keep_last=1)
    with caplog.at_level("WARNING"):
        assert restarted.find_resume().step == 4
    assert "step-00000020" in caplog.text and "step-00000020.corrupt" in caplog.text
    assert (tmp_path / "step-00000010.corrupt").is_dir() and (tmp_path / "step-00000020.corrupt").is_dir()
    save(restarted, 5)
    save(restarted, 6)
    assert steps(tmp_path) == [6]
    assert newest_valid(tmp_path).step == 6


def test_incomplete_folders_are_ignored_and_cleaned_at_start(tmp_path):
    m = manager(tmp_path)
    save(m, 5)
    (tmp_path / "step-00000010.tmp").mkdir()
    (tmp_path / "step-00000003.deleting").mkdir()
    assert newest_valid(tmp_path).step == 5
    m.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]


def test_a_complete_tmp_whose_step_is_missing_is_committed_at_start(tmp_path):
    """A kill between a re-save's two renames (old step-N -> .deleting, step-N.tmp -> step-N)."""
    m = manager(tmp_path, keep_last=5)
    save(m, 3)
    save(m, 5, payload=2.0)
    os.replace(tmp_path / "step-00000005", tmp_path / "step-00000005.tmp")
    (tmp_path / "step-00000005.deleting").mkdir()  # the first save of step 5, half removed
    (tmp_path / "step-00000007.tmp").mkdir()  # incomplete: still removed
    m.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003", "step-00000005"]
    shared, _ = m.load(m.find_resume())
    assert torch.equal(shared["model"]["w"], torch.full((4,), 2.0))


def test_a_complete_tmp_is_removed_when_its_step_is_committed(tmp_path):
    m = manager(tmp_path)
    save(m, 5, payload=1.0)
    save(manager(tmp_path / "other"), 5, payload=2.0)
    os.replace(tmp_path / "other" / "step-00000005", tmp_path / "step-00000005.tmp")
    m.clean_stale()
    assert not (tmp_path / "step-00000005.tmp").exists()
    shared, _ = m.load(m.find_resume())
    assert torch.equal(shared["model"]["w"], torch.full((4,), 1.0))


@pytest.mark.parametrize("damage", ["no-marker", "manifest-edited", "manifest-garbage", "file-truncated",
                                    "byte-flipped", "file-missing"])
def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage, caplog):
    m = manager(tmp_path, keep_last=5)
    save(m, 5)
    save(m, 10)
    newest = tmp_path / "step-00000010"
    shared = newest / "shared.pt"
    if damage == "no-marker":
        (newest / "COMPLETE").unlink()
    elif damage == "manifest-edited":
        manifest = json.loads((newest / "manifest.json").read_text())
        manifest["step"] = 11
        (newest / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "manifest-garbage":
        (newest / "manifest.json").write_bytes(b"\x00{not json")
    elif damage == "file-truncated":
        os.truncate(shared, shared.stat().st_size // 2)
    elif damage == "byte-flipped":
        data = bytearray(shared.read_bytes())
        data[100] ^= 0x01
        shared.write_bytes(bytes(data))
    elif damage == "file-missing":
        shared.unlink()
    with pytest.raises(CorruptCheckpoint):
        verify(newest)
    with caplog.at_level("WARNING"):
        found = newest_valid(tmp_path)
    assert found.step == 5
    assert "skipping checkpoint" in caplog.text and "step-00000010" in caplog.text


def test_same_step_saved_twice_replaces_the_first(tmp_path):
    m = manager(tmp_path)
    save(m, 5, payload=1.0)
    save(m, 5, payload=2.0)
    shared, _ = m.load(newest_valid(tmp_path))
    assert torch.equal(shared["model"]["w"], torch.full((4,), 2.0))
    assert steps(tmp_path) == [5]


def test_resume_from_prefers_own_checkpoints_then_resume_from(tmp_path):
    other = tmp_path / "other-run" / "checkpoints"
    save(manager(other), 7)
    mine = manager(tmp_path / "mine")
    assert mine.find_resume(str(other)).step == 7
    assert mine.find_resume(str(other / "step-00000007")).step == 7
    save(mine, 3)
    assert mine.find_resume(str(other)).step == 3  # the run's own progress wins after a restart
    with pytest.raises(CorruptCheckpoint):
        manager(tmp_path / "empty").find_resume(str(tmp_path / "nowhere"))


def test_async_save_snapshots_state_at_save_time(tmp_path):
    m = manager(tmp_path, async_save=True)
    w = torch.zeros(4)
    m.save(1, shared=lambda: {"model": {"w": w}}, part={}, metrics={})
    w.add_(1.0)  # training continues while the write runs
    m.wait()
    shared, _ = m.load(newest_valid(tmp_path))
    assert torch.equal(shared["model"]["w"], torch.zeros(4))
