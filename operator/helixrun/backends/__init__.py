"""The execution backend seam: how a resolved run becomes a training job.

Everything job-kind-specific lives behind `Backend` (backends/base.py): rendering the job, reading
its phase, suspending it, its pods' labels and container. Kubeflow's training-operator v1 runs a
`PyTorchJob`; Kubeflow Trainer v2 runs a `TrainJob` on JobSet.
"""

from __future__ import annotations

from collections.abc import Callable

from helixrun.backends.base import Backend, JobState
from helixrun.backends.pytorchjob import PyTorchJobBackend
from helixrun.backends.trainjob import TrainJobBackend

__all__ = ["BACKENDS", "Backend", "JobState", "choose"]

# In `auto`'s order of preference: PyTorchJob where both are installed.
BACKENDS: dict[str, Backend] = {b.name: b for b in (PyTorchJobBackend(), TrainJobBackend())}


def choose(choice: str, served: Callable[[Backend], bool] | None = None) -> Backend:
    """The backend named, or for `auto` the first whose job kind the cluster serves (offline: PyTorchJob)."""
    if choice != "auto":
        try:
            return BACKENDS[choice]
        except KeyError:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or auto, got {choice!r}") from None
    if served is None:
        return next(iter(BACKENDS.values()))
    for backend in BACKENDS.values():
        if served(backend):
            return backend
    kinds = " or ".join(f"{b.kind} ({b.group})" for b in BACKENDS.values())
    raise LookupError(f"backend auto: the cluster serves neither {kinds}; install the Kubeflow training-operator or Trainer v2")
