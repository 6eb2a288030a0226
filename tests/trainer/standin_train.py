"""A stand-in for helixrun-train under helixrun-launch: records what it was started with, then acts.

STANDIN_DIR: where each child writes rank-<RANK>.json (its pid, argv and placement env).
STANDIN_RANK<N>: what the child of global rank N does (else STANDIN_ALL, else `exit 0`):
  `exit <code>`   exit with that code
  `exit <code> after <file>`   once <file> exists in STANDIN_DIR (another child's record), exit with that code
  `sleep`         wait for SIGTERM, then exit 143 as a trainer does after its save
  `stubborn`      ignore SIGTERM and wait to be killed
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

PLACEMENT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


def main() -> int:
    rank = os.environ["RANK"]
    action = os.environ.get(f"STANDIN_RANK{rank}") or os.environ.get("STANDIN_ALL", "exit 0")
    if action == "sleep":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    elif action == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record = {"pid": os.getpid(), "argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in PLACEMENT}}
    path = Path(os.environ["STANDIN_DIR"]) / f"rank-{rank}.json"
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(record))
    staging.rename(path)  # the test polls for the file: it appears whole
    if action.startswith("exit "):
        code, _, after = action[len("exit "):].partition(" after ")
        while after and not (path.parent / after).exists():
            time.sleep(0.01)
        return int(code)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
