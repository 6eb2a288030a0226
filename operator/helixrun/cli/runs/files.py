"""Read a local run folder made by `helixrun-train --local --workdir DIR`.

DIR/config.yaml (or records/config.yaml) is the resolved run, records/metrics.jsonl
the trainer's records, checkpoints/ the checkpoint volume (helixrun.checkpoint_layout:
only checkpoints whose manifest matches its COMPLETE checksum count).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from helixrun import checkpoint_layout
from helixrun.cli.runs.views import LocalRun

RECORDS = Path("records") / "metrics.jsonl"
CONFIGS = (Path("config.yaml"), Path("records") / "config.yaml")
CHECKPOINTS = "checkpoints"


def is_run_folder(target: str | None) -> bool:
    return bool(target) and Path(target).is_dir()


def read_local_run(folder: str | Path) -> LocalRun:
    folder = Path(folder)
    records = folder / RECORDS
    checkpoints = folder / CHECKPOINTS
    return LocalRun(
        folder=folder,
        config=read_config(folder),
        records=read_records(folder),
        checkpoints=checkpoint_layout.committed(checkpoints),
        records_modified=records.stat().st_mtime if records.exists() else None,
        exported=(checkpoints / checkpoint_layout.FINAL).is_dir(),
    )


def read_records(folder: Path) -> list[dict]:
    path = folder / RECORDS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a half-written last line of a killed trainer
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_config(folder: Path) -> dict:
    for path in CONFIGS:
        if (folder / path).exists():
            return yaml.safe_load((folder / path).read_text()) or {}
    return {}
