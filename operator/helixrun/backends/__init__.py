"""The execution backend seam: how a resolved run becomes a training job.

Everything job-kind-specific lives behind `Backend`: rendering the job, reading
its phase, suspending it. Kubeflow Trainer v2's TrainJob (which Kueue favours
over PyTorchJob) is added as one more module here without touching the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from helixrun.render import RenderSettings
    from helixrun.resolve import ResolvedRun


@dataclass(frozen=True)
class JobState:
    """What the run's status should say about its job."""

    phase: str  # Pending | Running | Restarting | Succeeded | Failed | Suspended
    reason: str
    message: str


class Backend(Protocol):
    group: str
    version: str
    kind: str
    plural: str

    def render_job(self, run: "ResolvedRun", settings: "RenderSettings") -> dict: ...

    def job_state(self, job: dict) -> JobState: ...

    def suspend_patch(self, suspend: bool) -> dict: ...

    def backoff_patch(self, limit: int) -> dict: ...


def backend_for(run: "ResolvedRun") -> Backend:
    from helixrun.backends.pytorchjob import PyTorchJobBackend

    return PyTorchJobBackend()
