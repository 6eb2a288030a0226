"""Graceful preemption: SIGTERM (kubelet, torchrun, Kueue) or SIGINT sets a flag; the loop
finishes the step in flight, checkpoints, and exits with a retryable code."""

from __future__ import annotations

import logging
import signal

from helixrun_trainer.errors import EXIT_SIGINT, EXIT_SIGTERM

log = logging.getLogger(__name__)

# The last signal received by this process (read by faults.pause_point).
SIGNALLED: int | None = None


class Preemption:
    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signal == signal.SIGINT else EXIT_SIGTERM

    def _handle(self, signum, _frame) -> None:
        if self.signal is None:
            log.warning("received %s: finishing the step in flight, then checkpointing", signal.Signals(signum).name)
        self.signal = signum
        global SIGNALLED
        SIGNALLED = signum

    def __enter__(self) -> "Preemption":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
