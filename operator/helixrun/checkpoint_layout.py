"""What a checkpoint folder holds and how a reader knows it is complete; no torch.

The trainer writes this layout (helixrun_trainer/checkpoint.py) and `helixrun
status` reads it; both take the names and the manifest check from here.

    step-00000500/            complete: manifest.json + COMPLETE inside
      shared.pt               rank 0: trainable model state, optimizer, scheduler, scaler, counters, data position
      rank-00000.pt ...       every rank: its RNG states (python, numpy, torch CPU, CUDA)
      dcp/                    FSDP only: sharded model + optimizer (torch.distributed.checkpoint)
      manifest.json           step, metrics, world size, created_unix, every file's bytes and sha256
      COMPLETE                sha256 of manifest.json
    step-00000505.tmp/        being written (readers ignore it)
    final/                    Hugging Face export at the end of training
    latest                    advisory: name of the newest complete checkpoint
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d{8})$")
MANIFEST, COMPLETE, SHARED = "manifest.json", "COMPLETE", "shared.pt"
FINAL, LATEST = "final", "latest"
FORMAT_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


class CorruptCheckpoint(Exception):
    pass


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    manifest: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})


def read_manifest(path: Path) -> dict:
    """The manifest of a committed checkpoint, or CorruptCheckpoint saying why not."""
    complete, manifest = path / COMPLETE, path / MANIFEST
    if not complete.is_file():
        raise CorruptCheckpoint(f"{path.name}: no {COMPLETE} marker")
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"{path.name}: manifest unreadable: {exc}") from exc
    if hashlib.sha256(raw).hexdigest() != complete.read_text().strip():
        raise CorruptCheckpoint(f"{path.name}: manifest does not match its {COMPLETE} checksum")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{path.name}: manifest is not JSON: {exc}") from exc
    if data.get("format") != FORMAT_VERSION or "files" not in data:
        raise CorruptCheckpoint(f"{path.name}: unknown manifest format {data.get('format')!r}")
    return data


def committed(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoints (marker + manifest matching its checksum), oldest first; files are not re-hashed."""
    out = []
    if not root.is_dir():
        return out
    for entry in root.iterdir():
        m = STEP_DIR.match(entry.name)
        if not m or not entry.is_dir():
            continue
        try:
            manifest = read_manifest(entry)
        except CorruptCheckpoint:
            continue
        out.append(CheckpointInfo(entry, int(m.group(1)), manifest))
    return sorted(out, key=lambda c: c.step)
