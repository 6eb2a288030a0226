"""Pure reading of trainer pods: exit codes, the restart contract, scheduling trouble."""

from __future__ import annotations

from dataclasses import dataclass

from helixrun.backends.pytorchjob import CONTAINER

# The trainer's exit-code contract (restartPolicy ExitCode): 1-127 permanent, 128+ retryable.
RETRYABLE_FROM = 128


@dataclass(frozen=True)
class Termination:
    pod: str
    uid: str
    exit_code: int
    reason: str
    message: str

    @property
    def retryable(self) -> bool:
        return self.exit_code >= RETRYABLE_FROM

    def describe(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        detail = f": {self.message.strip()}" if self.message.strip() else (f" ({self.reason})" if self.reason else "")
        return f"pod {self.pod} exited with code {self.exit_code} ({kind}){detail}"


def termination(pod: dict) -> Termination | None:
    """The trainer container's termination, when the pod has failed."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == CONTAINER and terminated:
            return Termination(
                pod=pod["metadata"]["name"],
                uid=pod["metadata"]["uid"],
                exit_code=int(terminated.get("exitCode", 1)),
                reason=terminated.get("reason", ""),
                message=terminated.get("message", ""),
            )
    return None


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


def peers_to_restart(pods: list[dict], failed: str) -> list[str]:
    """Live ranks of a gang whose member failed: they are deleted so every rank resumes together.

    A peer that already ended is left alone: deleting it would hide its own exit (a permanent
    one must fail the run, not be recreated).
    """
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["name"] != failed
        and not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
    )
