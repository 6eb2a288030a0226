"""Files several processes may write at once (ranks of one run, runs sharing a cache), and files that must
survive a power cut once written (checkpoints, run records)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], object], *, durable: bool = False) -> None:
    """`write` fills a staging file private to this process, which then replaces `path` in one rename: ranks
    writing the same file at once never mix their bytes, and a reader sees a whole file, old or new.
    `durable`: the bytes reach the disk (fsync) before the rename makes them visible."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(staging)
    if durable:
        with open(staging, "rb") as f:
            os.fsync(f.fileno())
    os.replace(staging, path)
