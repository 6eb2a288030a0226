"""Fault-injection points for the kill tests (inactive unless HELIXRUN_TEST_PAUSE is set).

HELIXRUN_TEST_PAUSE="<step>:<phase>[@<rank>],..." makes the trainer, on reaching
that point, write `PAUSED-<step>-<phase>-r<rank>` into the checkpoint folder and
block there until SIGTERM/SIGINT arrives (then it carries on, so a preemption
can be tested at an exact point) or SIGKILL ends it. Phases: `trained` (step
counted, before its evaluation), `after-step` (step logged, before its checkpoint), `parts` (in a save: this rank's files written,
before its .done marker), `commit` (rank 0: manifest and COMPLETE written,
before the rename that commits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from helixrun_trainer import preemption


def pause_point(root: Path, step: int, phase: str, rank: int) -> None:
    spec = os.environ.get("HELIXRUN_TEST_PAUSE")
    if not spec:
        return
    for item in spec.split(","):
        point, _, only_rank = item.strip().partition("@")
        if point == f"{step}:{phase}" and (not only_rank or int(only_rank) == rank):
            Path(root).mkdir(parents=True, exist_ok=True)
            (Path(root) / f"PAUSED-{step}-{phase}-r{rank}").write_text(str(os.getpid()))
            while preemption.SIGNALLED is None:
                time.sleep(0.02)
            return
