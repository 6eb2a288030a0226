"""Files several processes may write at once (ranks of one run, runs sharing a cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a staging file private to this process, which then replaces `path` in one rename: ranks
    writing the same file at once never mix their bytes, and a reader sees a whole file, old or new."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(staging)
    os.replace(staging, path)
