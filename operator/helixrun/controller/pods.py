"""Pure reading of trainer pods: exits, deletions, the restart contract, scheduling trouble."""

from __future__ import annotations

from dataclasses import dataclass

from helixrun.backends import Backend

# The trainer's exit-code contract (restartPolicy ExitCode): 1-127 permanent, 128+ retryable.
RETRYABLE_FROM = 128
# Why a pod went when it carries no DisruptionTarget condition (`kubectl delete pod`, a controller of someone's).
DELETED = "deleted"
FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Termination:
    """How a trainer pod ended: its trainer's exit, its deletion, or both (SIGTERM, checkpoint, 143)."""

    pod: str
    key: str  # what the end is counted by: the pod's UID, or the gang incarnation it ended (Backend.end_key)
    exit_code: int | None  # None: the pod was deleted before its trainer exited
    reason: str
    message: str
    deletion: str | None = None  # the pod's DisruptionTarget reason, or DELETED; None while nobody deletes it

    @property
    def retryable(self) -> bool:
        return self.exit_code is None or self.exit_code >= RETRYABLE_FROM

    @property
    def deleted(self) -> bool:
        return self.deletion is not None

    def describe(self) -> str:
        why = "" if self.deletion in (None, DELETED) else f": {self.deletion}"
        if self.exit_code is None:
            detail = f" ({self.message.strip()})" if self.message.strip() else ""
            return f"pod {self.pod} was deleted{why}{detail}, retryable"
        kind = "retryable" if self.retryable else "permanent"
        detail = f": {self.message.strip()}" if self.message.strip() else (f" ({self.reason})" if self.reason else "")
        text = f"pod {self.pod} exited with code {self.exit_code} ({kind}){detail}"
        return text + (f"; it was being deleted{why}" if self.deleted else "")


def _disruption(pod: dict) -> tuple[str, str]:
    """The reason and message of the pod's DisruptionTarget condition: eviction, preemption, a tainted node."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return condition.get("reason") or DELETED, condition.get("message") or ""
    return DELETED, ""


def termination(pod: dict, gone: bool = False, *, backend: Backend) -> Termination | None:
    """How the trainer pod ended, or None while it has not (or when it succeeded).

    A failed pod ended with its trainer's exit code; a pod being deleted (`gone`: its DELETED
    event) ended then, even while its trainer still saves a checkpoint on SIGTERM: the exit that
    follows is the same end, told by the same pod UID.
    """
    status = pod.get("status") or {}
    deleted = gone or bool(pod["metadata"].get("deletionTimestamp"))
    if status.get("phase") == "Succeeded" or not (deleted or status.get("phase") == "Failed"):
        return None
    deletion, why = _disruption(pod) if deleted else (None, "")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == backend.container and terminated:
            return Termination(
                pod=pod["metadata"]["name"],
                key=backend.end_key(pod),
                exit_code=int(terminated.get("exitCode", 1)),
                reason=terminated.get("reason", ""),
                message=terminated.get("message", ""),
                deletion=deletion,
            )
    if not deleted:
        return None  # failed before its trainer started: the training-operator's to explain
    return Termination(pod["metadata"]["name"], backend.end_key(pod), None, "", why, deletion)


def deleted_on_purpose(run: dict, job: dict | None, backend: Backend) -> bool:
    """Whether a trainer pod's deletion is the run's own doing, no failure to count.

    Deleting, suspending or finishing a run or its job removes its pods (the garbage collector,
    the training-operator, Kueue); only a deletion nobody on the run's side asked for (eviction,
    preemption, a lost node, `kubectl delete pod`) restarts the gang. `job` is None once it is gone.
    """
    if run["metadata"].get("deletionTimestamp") or run["spec"].get("suspend"):
        return True
    if (run.get("status") or {}).get("phase") in FINISHED:
        return True
    if job is None or job["metadata"].get("deletionTimestamp"):
        return True
    # Kueue suspends the job, not the run: the job carries the backend's own suspend patch then.
    return _carries(job, backend.suspend_patch(True)) or backend.job_state(job).phase in FINISHED + ("Suspended",)


def _carries(obj: dict, patch: dict) -> bool:
    return all(
        _carries(obj.get(key) or {}, value) if isinstance(value, dict) else obj.get(key) == value
        for key, value in patch.items()
    )


def unschedulable_message(pod: dict) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def gang_placement(pods: list[dict]) -> tuple[bool, str] | None:
    """Whether the whole gang is placed: False with the scheduler's reason while any pod waits.

    Judged over every pod of the job, never one pod's event: a peer that runs says nothing
    about the rank still waiting for a node. None while pods exist that are neither.
    """
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    for pod in live:
        message = unschedulable_message(pod)
        if message:
            return False, message
    if live and all((p.get("spec") or {}).get("nodeName") for p in live):
        return True, "every pod of the job is placed"
    return None


@dataclass(frozen=True)
class GangRestart:
    """What one counted end does to the rest of its gang."""

    delete: tuple[tuple[str, str], ...]  # (name, uid) of the live peers: deleted so every rank resumes together
    accounted: tuple[str, ...]  # UIDs of the peers whose ends this restart stands for, never counted again


def gang_restart(pods: list[dict], ended: Termination, backend: Backend) -> GangRestart:
    """The restart of the whole gang that a retryable end causes.

    Every peer of that moment goes with it, counted once: the live ones the operator deletes, those
    someone else is deleting (a drained node holding two ranks), and those already failed with a
    retryable code (a lost peer). A peer that exited permanently is left to its own event, which
    fails the run; one that succeeded ended well. A recreated pod with the ended pod's name is new.
    A backend whose job restarts the gang itself (JobSet) counts the whole incarnation by one key.
    """
    if not ended.retryable or backend.restarts_gang:
        return GangRestart((), ())
    delete, accounted = [], []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        phase = (pod.get("status") or {}).get("phase")
        own = termination(pod, backend=backend)
        if name == ended.pod or phase == "Succeeded" or (own is not None and not own.retryable):
            continue
        accounted.append(backend.end_key(pod))
        if not pod["metadata"].get("deletionTimestamp") and phase != "Failed":
            delete.append((name, uid))
    return GangRestart(tuple(delete), tuple(accounted))
