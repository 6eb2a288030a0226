"""Checkpoints that a kill at any instant leaves complete or absent.

The layout on the checkpoint volume (local: DIR/checkpoints) and the manifest check are
helixrun.checkpoint_layout's, shared with `helixrun status`. A `step-N.tmp/` left by a dead
process is committed at the next start if it verifies and step-N is missing, else removed.

Save protocol: rank 0 creates step-N.tmp; barrier; every rank writes its part to
a staging file, fsyncs, renames, and writes rank-R.done (its files' sizes and
checksums); barrier; rank 0 checks every rank's .done, writes manifest.json and
COMPLETE (tmp + fsync + rename), renames step-N.tmp -> step-N and fsyncs the
folder. The rename is the commit. Retention runs only after a commit, on
complete checkpoints, and always keeps the newest one and the one just saved; a folder is
renamed to `.deleting` before it is removed, so a half-deleted folder never looks complete.
On resume, committed checkpoints newer than the one loaded failed verification: they are
renamed to `.corrupt` (with a warning), never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from helixrun.checkpoint_layout import (
    COMPLETE, FORMAT_VERSION, LATEST, MANIFEST, SHARED, STEP_DIR, CheckpointInfo, CorruptCheckpoint, committed,
    rank_file, read_manifest, step_dir_name,
)
from helixrun_trainer.distributed import DistEnv, barrier, flags_any
from helixrun_trainer.faults import pause_point
from helixrun_trainer.files import write_atomically

log = logging.getLogger(__name__)


# -- durable file writes -----------------------------------------------------


class CheckpointWriteFailed(OSError):
    """Another rank's checkpoint writer failed; this rank's own part is fine."""


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, write: Callable[[Any], None]) -> dict:
    """Write durably and atomically (files.write_atomically); return {"bytes", "sha256"} of what was written."""
    written = {}

    def hashed(staging: Path) -> None:
        with open(staging, "wb") as f:
            writer = _HashingWriter(f)
            write(writer)
        written.update(bytes=writer.bytes, sha256=writer.sha.hexdigest())

    write_atomically(path, hashed, durable=True)
    return written


def durable_torch_save(obj: Any, path: Path) -> dict:
    """torch.save through its C++ file writer (a Python write callback is slower), then hash the file back
    from the page cache; durable and atomic like durable_write."""
    written = {}

    def saved(staging: Path) -> None:
        torch.save(obj, staging)
        written.update(bytes=staging.stat().st_size, sha256=sha256_file(staging))

    write_atomically(path, saved, durable=True)
    return written


def durable_text(path: Path, text: str) -> dict:
    return durable_write(path, lambda f: f.write(text.encode()))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()


# -- what is on the volume ---------------------------------------------------


def verify(path: Path, checksums: bool = True) -> CheckpointInfo:
    """Check marker, manifest, and every listed file's size (and sha256)."""
    manifest = read_manifest(path)
    for rel, meta in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise CorruptCheckpoint(f"{path.name}: missing {rel}")
        if f.stat().st_size != meta["bytes"]:
            raise CorruptCheckpoint(f"{path.name}: {rel} has {f.stat().st_size} bytes, manifest says {meta['bytes']}")
        if checksums and sha256_file(f) != meta["sha256"]:
            raise CorruptCheckpoint(f"{path.name}: {rel} checksum mismatch")
    return CheckpointInfo(path, int(manifest["step"]), manifest)


def newest_valid(root: Path, checksums: bool = True) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; incomplete or corrupt ones are skipped with a warning."""
    if not root.is_dir():
        return None
    candidates = sorted((e for e in root.iterdir() if STEP_DIR.match(e.name) and e.is_dir()), reverse=True)
    for entry in candidates:
        try:
            return verify(entry, checksums)
        except CorruptCheckpoint as exc:
            log.warning("skipping checkpoint %s: %s", entry, exc)
    return None


# -- retention ---------------------------------------------------------------


def to_keep(checkpoints: list[CheckpointInfo], *, keep_last: int, best_metric: str | None = None,
            best_mode: str = "min", archive_every: int | None = None) -> set[int]:
    """Steps to keep: the last N, the best by metric, every archive_every-th, and always the newest."""
    if not checkpoints:
        return set()
    steps = sorted(c.step for c in checkpoints)
    keep = set(steps[-max(1, keep_last):])
    if archive_every:
        keep |= {s for s in steps if s % archive_every == 0}
    if best_metric:
        # Only finite values compete: a NaN compares false with everything and would match no step.
        scored = [c for c in checkpoints if _is_finite_number(c.metrics.get(best_metric))]
        if scored:
            values = [c.metrics[best_metric] for c in scored]
            best_value = min(values) if best_mode == "min" else max(values)
            # Ties go to the earlier step: the first time the best value was reached.
            keep.add(min(c.step for c in scored if c.metrics[best_metric] == best_value))
    keep.add(steps[-1])
    return keep


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def remove_checkpoint(path: Path) -> None:
    doomed = path.with_name(path.name + ".deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `<name>.corrupt` (numbered if taken); readers and retention skip it."""
    aside, n = path.with_name(path.name + ".corrupt"), 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{n}")
    os.replace(path, aside)
    return aside


# -- the manager -------------------------------------------------------------


class CheckpointManager:
    """Save and find checkpoints for one run; every rank holds one and calls save() together."""

    def __init__(self, root: str | Path, env: DistEnv, *, keep_last: int = 3, best_metric: str | None = None,
                 best_mode: str = "min", archive_every: int | None = None, checksums_on_load: bool = True,
                 async_save: bool = False):
        self.root = Path(root)
        self.env = env
        self.keep_last, self.best_metric, self.best_mode = keep_last, best_metric, best_mode
        self.archive_every = archive_every
        self.checksums_on_load = checksums_on_load
        self.async_save = async_save
        self._pending: _Pending | None = None
        self.last_saved: CheckpointInfo | None = None

    # Start of a run: stale .tmp and .deleting folders belong to a dead process.
    def clean_stale(self) -> None:
        if self.env.is_main and self.root.is_dir():
            for entry in self.root.iterdir():
                if not entry.is_dir() or not entry.name.endswith((".tmp", ".deleting")):
                    continue
                if self._commit_stale(entry):
                    continue
                log.warning("removing incomplete checkpoint %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
        barrier(self.env)

    def _commit_stale(self, tmp: Path) -> bool:
        """Rename a `step-N.tmp` that verifies into place when `step-N` is missing: a kill between the two
        renames of a re-save (old folder -> .deleting, .tmp -> step-N) left the new save complete there."""
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        if tmp.suffix != ".tmp" or not STEP_DIR.match(final.name) or final.exists():
            return False
        try:
            info = verify(tmp, self.checksums_on_load)
        except CorruptCheckpoint:
            return False
        if step_dir_name(info.step) != final.name:
            return False
        os.replace(tmp, final)
        fsync_dir(self.root)
        log.warning("committed checkpoint %s, complete but left uncommitted by a dead process", final.name)
        return True

    def find_resume(self, resume_from: str | None = None) -> CheckpointInfo | None:
        """Newest valid checkpoint of this run; else spec.resumeFrom (a checkpoint folder or a run's folder)."""
        found = newest_valid(self.root, self.checksums_on_load)
        self._set_aside_newer_than(found)
        if found or not resume_from:
            return found
        path = Path(resume_from)
        if not path.is_absolute():
            path = self.root / path
        if STEP_DIR.match(path.name):
            return verify(path, self.checksums_on_load)
        found = newest_valid(path, self.checksums_on_load)
        if found is None:
            raise CorruptCheckpoint(f"resumeFrom {resume_from}: no complete checkpoint there")
        return found

    def _set_aside_newer_than(self, loadable: CheckpointInfo | None) -> None:
        """Rename committed checkpoints newer than the newest loadable one (all failed verification) to
        `.corrupt`: retention would count them as newest and delete each new save. Kept for inspection."""
        barrier(self.env)  # every rank has finished verifying before rank 0 renames
        if self.env.is_main:
            floor = loadable.step if loadable else -1
            for c in committed(self.root):
                if c.step > floor:
                    aside = set_aside(c.path)
                    log.warning("checkpoint %s fails verification: renamed to %s so it no longer counts as "
                                "the newest", c.path.name, aside.name)
        barrier(self.env)

    def load(self, info: CheckpointInfo) -> tuple[dict, dict | None]:
        """(shared state, this rank's state or None when the checkpoint has no part for this rank)."""
        shared = torch.load(info.path / SHARED, map_location="cpu", weights_only=False)
        mine = info.path / rank_file(self.env.rank)
        part = torch.load(mine, map_location="cpu", weights_only=False) if mine.is_file() else None
        return shared, part

    # -- saving ---------------------------------------------------------------

    def save(self, step: int, *, shared: Callable[[], dict], part: dict, metrics: dict,
             sharded: Callable[[Path], None] | None = None, meta: dict | None = None) -> None:
        """Write step `step`; every rank calls it at the same step. `shared()` is called on rank 0 only (model,
        optimizer...); `part` is this rank's own state; `sharded(dir)` is a collective writer (DCP).

        Async mode: the state is copied to CPU here (the blocking part) and written by a background thread
        that runs no collectives; the commit (.done markers, barrier, rank 0's rename) happens in
        `finish_if_ready`/`wait`, which every rank reaches at the same step."""
        self.wait()
        tmp = self.root / (step_dir_name(step) + ".tmp")
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier(self.env)
        if sharded is not None:
            sharded(tmp / "dcp")
        shared_state = shared() if self.env.is_main else None
        if not self.async_save:
            files, error = None, None
            try:
                files = self._write_files(tmp, step, shared_state, part)
            except Exception as exc:  # settled across ranks first, so no peer waits on this one forever
                error = exc
            self._settle_writers(step, error)
            self._finalize(tmp, step, files, metrics, meta)
            return
        pending = _Pending(step=step, tmp=tmp, metrics=metrics, meta=meta)
        snapshot, part = _cpu_copy(shared_state), _cpu_copy(part)

        def write() -> None:
            try:
                pending.files = self._write_files(tmp, step, snapshot, part)
            except BaseException as exc:  # re-raised by wait() on the training thread
                pending.error = exc

        pending.thread = threading.Thread(target=write, daemon=True, name=f"checkpoint-{step}")
        pending.thread.start()
        self._pending = pending

    def part_written(self) -> bool:
        """This rank's files of the pending async save are on disk (or nothing is pending)."""
        return self._pending is None or not self._pending.thread.is_alive()

    def finish_if_ready(self, all_ranks_written: bool) -> None:
        """Commit a pending async save once every rank's part is written (the flag is all-reduced by the caller)."""
        if self._pending is not None and all_ranks_written:
            self.wait()

    def wait(self) -> None:
        """Commit a pending async save, waiting for its writer; a collective when a save is pending."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.thread.join()
        self._settle_writers(pending.step, pending.error)
        self._finalize(pending.tmp, pending.step, pending.files, pending.metrics, pending.meta)

    def _settle_writers(self, step: int, error: BaseException | None) -> None:
        """Every rank learns whether some rank's writer failed. Otherwise its peers would wait in
        _finalize's barrier until the process-group timeout and exit as if a peer were lost (retryable),
        restarting into the same failure."""
        (failed,) = flags_any(self.env, error is not None)
        if error is not None:
            raise error
        if failed:
            raise CheckpointWriteFailed(f"another rank failed writing checkpoint step {step}: see its log")

    def _write_files(self, tmp: Path, step: int, shared_state: dict | None, part: dict) -> dict:
        """This rank's files, durably; no collectives (runs in the async writer thread too)."""
        files: dict[str, dict] = {}
        if shared_state is not None:
            files[SHARED] = durable_torch_save(shared_state, tmp / SHARED)
        name = rank_file(self.env.rank)
        files[name] = durable_torch_save(part, tmp / name)
        pause_point(self.root, step, "parts", self.env.rank)
        return files

    def _finalize(self, tmp: Path, step: int, files: dict, metrics: dict, meta: dict | None) -> None:
        durable_text(tmp / f"rank-{self.env.rank:05d}.done", json.dumps(files))
        barrier(self.env)
        if self.env.is_main:
            self._commit(tmp, step, metrics, meta)
        barrier(self.env)
        if not self.env.is_main:
            final = self.root / step_dir_name(step)
            self.last_saved = CheckpointInfo(final, step, read_manifest(final))

    def _commit(self, tmp: Path, step: int, metrics: dict, meta: dict | None) -> None:
        files: dict[str, dict] = {}
        for r in range(self.env.world_size):
            done = tmp / f"rank-{r:05d}.done"
            if not done.is_file():
                raise CorruptCheckpoint(f"step {step}: rank {r} did not finish its part")
            files.update(json.loads(done.read_text()))
        dcp_dir = tmp / "dcp"
        if dcp_dir.is_dir():
            for f in sorted(dcp_dir.rglob("*")):
                if f.is_file():
                    files[str(f.relative_to(tmp))] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {
            "format": FORMAT_VERSION, "step": step, "metrics": metrics, "world_size": self.env.world_size,
            "created_unix": time.time(), "files": files, **({"meta": meta} if meta else {}),
        }
        text = json.dumps(manifest, indent=1, sort_keys=True)
        durable_text(tmp / MANIFEST, text)
        durable_text(tmp / COMPLETE, hashlib.sha256(text.encode()).hexdigest())
        fsync_dir(tmp)
        pause_point(self.root, step, "commit", self.env.rank)
        final = self.root / step_dir_name(step)
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
            remove_checkpoint(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        durable_text(self.root / LATEST, final.name + "\n")
        self.last_saved = CheckpointInfo(final, step, manifest)
        log.info("checkpoint %s committed (%d bytes)", final.name, sum(f["bytes"] for f in files.values()))
        self.apply_retention()

    def apply_retention(self) -> list[int]:
        found = committed(self.root)
        keep = to_keep(found, keep_last=self.keep_last, best_metric=self.best_metric, best_mode=self.best_mode,
                       archive_every=self.archive_every)
        if self.last_saved is not None:  # even when a newer committed folder outranks it
            keep.add(self.last_saved.step)
        removed = []
        for c in found:
            if c.step not in keep:
                remove_checkpoint(c.path)
                removed.append(c.step)
        if removed:
            log.info("retention removed checkpoints at steps %s", removed)
        return removed


@dataclass
class _Pending:
    step: int
    tmp: Path
    metrics: dict
    meta: dict | None
    thread: threading.Thread | None = None
    files: dict = field(default_factory=dict)
    error: BaseException | None = None


def checkpoint_bytes(info: CheckpointInfo) -> int:
    return sum(f["bytes"] for f in info.manifest.get("files", {}).values())


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj
