"""What every execution backend provides, and what the operator reads from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from helixrun.resolve import ResolvedRun
from helixrun.trainer_pod import RenderSettings


@dataclass(frozen=True)
class JobState:
    """What the run's status should say about its job."""

    phase: str  # Pending | Running | Restarting | Succeeded | Failed | Suspended
    reason: str
    message: str


class Backend(Protocol):
    """One job kind: how a run becomes that job, and every fact about it the operator needs.

    A backend owns its job's spec, its conditions, its pods' labels and its trainer container's
    name. It never touches the run's status, its other children or the cluster: the handlers do.
    """

    name: str  # the chart's `backend` value
    group: str
    version: str
    kind: str
    plural: str
    container: str  # the trainer container's name in the job's pods
    # Whether the job's controller restarts every pod when one ends (else the operator deletes the peers).
    restarts_gang: bool

    def render(self, run: ResolvedRun, settings: RenderSettings) -> list[dict]:
        """The job and anything it needs of its own kind, in creation order, the job last."""

    def job_state(self, job: dict) -> JobState: ...

    def suspend_patch(self, suspend: bool) -> dict: ...

    def held_for_job(self, job: dict) -> list[tuple[dict, str]]:
        """Objects of its own that a finalizer of ours keeps while the job exists: (object, finalizer), released when it goes."""

    def backoff_patch(self, limit: int) -> dict | None:
        """The job's own retry limit, or None where only the operator enforces spec.backoffLimit."""

    def owns(self, pod: dict) -> bool:
        """Whether this backend's job controller made the pod (by the labels it puts on its pods)."""

    def end_key(self, pod: dict) -> str:
        """What one end is counted by: a pod's UID, or the gang incarnation all its pods' ends stand for."""

    def peers(self, pods: list[dict], pod: dict) -> list[dict]:
        """The pods of `pod`'s gang as it ran together (not those a restart has since made)."""
