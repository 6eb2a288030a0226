"""Fault-injection points for the kill tests (inactive unless HELIXRUN_TEST_PAUSE or _FAIL is set).

HELIXRUN_TEST_PAUSE="<step>:<phase>[@<rank>],..." makes the trainer, on reaching
that point, write `PAUSED-<step>-<phase>-r<rank>` into the checkpoint folder and
block there until SIGTERM/SIGINT arrives (then it carries on, so a preemption
can be tested at an exact point) or SIGKILL ends it. Phases: `trained` (step
counted, before its evaluation), `after-step` (step logged, before its checkpoint), `parts` (in a save: this rank's files written,
before its .done marker), `commit` (rank 0: manifest and COMPLETE written,
before the rename that commits).

HELIXRUN_TEST_FAIL takes the same points and raises an OSError there instead,
as a full or failing disk would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from helixrun_trainer import preemption


def _matches(variable: str, step: int, phase: str, rank: int) -> bool:
    for item in os.environ.get(variable, "").split(","):
        point, _, only_rank = item.strip().partition("@")
        if point == f"{step}:{phase}" and (not only_rank or int(only_rank) == rank):
            return True
    return False


def pause_point(root: Path, step: int, phase: str, rank: int) -> None:
    if _matches("HELIXRUN_TEST_FAIL", step, phase, rank):
        raise OSError(f"injected failure at step {step} ({phase}) on rank {rank}")
    if _matches("HELIXRUN_TEST_PAUSE", step, phase, rank):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / f"PAUSED-{step}-{phase}-r{rank}").write_text(str(os.getpid()))
        while preemption.SIGNALLED is None:
            time.sleep(0.02)
