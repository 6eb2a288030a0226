"""Pure functions that compute a TrainingRun's status fields."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from helixrun.planner import Plan
from helixrun.durations import format_duration

# Condition types the operator maintains, each explaining one kind of transition.
PLAN_FITS = "PlanFits"
JOB_CREATED = "JobCreated"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
READY = "Running"
SCHEDULED = "Scheduled"
TRAINER_EXITED = "TrainerExited"
# Spec fields a running run may change; everything else is fixed at creation.
MUTABLE_FIELDS = frozenset({"suspend", "backoffLimit"})
# TrainerExited reasons. Only a retryable exit or a deleted pod leaves the run to be restarted.
RETRYABLE_EXIT, PERMANENT_EXIT, BACKOFF_EXCEEDED = "RetryableExit", "PermanentExit", "BackoffLimitExceeded"
POD_DELETED = "PodDeleted"
RESTARTED = frozenset({RETRYABLE_EXIT, POD_DELETED})
COUNTED_EXITS_KEPT = 64  # the CRD's maxItems for status.countedExits


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict] | None, type_: str, status: bool, reason: str, message: str, now: str
) -> list[dict]:
    """Return conditions with one upserted; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for condition in conditions or []:
        if condition.get("type") == type_:
            found = True
            changed = condition.get("status") != value
            condition = {
                **condition,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if changed else condition.get("lastTransitionTime", now),
            }
        out.append(condition)
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now})
    return out


def plan_summary(plan: Plan) -> dict:
    summary = {
        "fits": plan.fits,
        "method": plan.method,
        "precision": plan.precision,
        "microBatch": plan.micro_batch,
        "gradAccum": plan.grad_accum,
        "globalBatch": f"{plan.global_batch} {plan.global_batch_unit}",
        "zeroStage": plan.zero_stage,
        "offload": plan.offload,
        "gradientCheckpointing": plan.gradient_checkpointing,
        "poolMemoryGiB": plan.memory_limit_gib,
    }
    if plan.memory is not None:
        summary["memoryGiB"] = round(plan.memory.total, 2)
    if plan.total_seconds is not None:
        summary["eta"] = format_duration(plan.total_seconds)
    if plan.cost_usd is not None:
        summary["costUSD"] = round(plan.cost_usd, 2)
    return summary


def changed_fields(old: dict, new: dict, prefix: str = "") -> set[str]:
    """Dotted paths of the leaves that differ between two specs."""
    out = set()
    for key in set(old) | set(new):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out |= changed_fields(a, b, path + ".")
        elif a != b:
            out.add(path)
    return out


def refused_changes(old: dict, new: dict) -> list[str]:
    return sorted(path for path in changed_fields(old, new) if path.split(".")[0] not in MUTABLE_FIELDS)


def explain(phase: str, conditions: list[dict] | None) -> str:
    """The status message: the most specific explanation of the phase the conditions hold."""
    by_type = {c["type"]: c for c in conditions or []}
    exited, scheduled = by_type.get(TRAINER_EXITED), by_type.get(SCHEDULED)
    if exited and exited["status"] == "True" and (
        phase == "Restarting" or (phase == "Failed" and exited["reason"] not in RESTARTED)
    ):  # a restart long since recovered from does not explain a later failure
        return exited["message"]
    if phase == "Pending" and scheduled and scheduled["status"] == "False":
        return scheduled["message"]
    return by_type.get(READY, {}).get("message", "")


def count_exit(status: dict, ended, backoff_limit: int | None, now: str, accounted: Sequence[str] = ()) -> dict | None:
    """The status update for a trainer pod's end (its exit or its deletion), or None when it was counted.

    Counting is keyed by pod UID inside a precondition-guarded write, so it is exactly once however
    often the event arrives; `accounted` are the UIDs of the peers whose ends the same gang restart
    stands for (gang_restart), recorded in the same write so their own events count nothing.
    Restarts beyond `backoff_limit` fail the run: the training-operator's own limit counts container
    restarts, and ExitCode replicas are recreated, never restarted.
    """
    counted = list(status.get("countedExits") or [])
    if ended.uid in counted:
        return None
    counted += [uid for uid in accounted if uid not in counted]
    update: dict = {"countedExits": (counted + [ended.uid])[-COUNTED_EXITS_KEPT:]}
    reason, message, phase = PERMANENT_EXIT, ended.describe(), status.get("phase", "Pending")
    if ended.retryable:
        update["restarts"] = restarts = int(status.get("restarts") or 0) + 1
        reason = RETRYABLE_EXIT if ended.exit_code is not None else POD_DELETED
        if backoff_limit is not None and restarts > backoff_limit:
            reason, phase = BACKOFF_EXCEEDED, "Failed"
            message += f"; restart {restarts} exceeds spec.backoffLimit {backoff_limit}"
            update["phase"] = phase
    conditions = set_condition(status.get("conditions"), TRAINER_EXITED, True, reason, message, now)
    return update | {"conditions": conditions, "message": explain(phase, conditions)}


def mirror_job(status: dict, phase: str, reason: str, message: str, now: str) -> dict | None:
    """The run's phase and Running condition from its job's state; None when nothing changes.

    A run failed for exceeding its backoff limit stays failed: its job is being deleted, and the
    events of that deletion are no news about the run.
    """
    conditions = status.get("conditions") or []
    exited = next((c for c in conditions if c["type"] == TRAINER_EXITED), {})
    if exited.get("reason") == BACKOFF_EXCEEDED:
        return None
    ready = next((c for c in conditions if c["type"] == READY), {})
    if status.get("phase") == phase and (ready.get("reason"), ready.get("message")) == (reason, message):
        return None
    running = phase in ("Running", "Succeeded")
    conditions = set_condition(conditions, READY, running, reason, message, now)
    return {"phase": phase, "conditions": conditions, "message": explain(phase, conditions)}
