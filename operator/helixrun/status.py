"""Pure functions that compute a TrainingRun's status fields."""

from __future__ import annotations

from datetime import datetime, timezone

from helixrun.planner import Plan
from helixrun.planner.timing import format_duration

# Condition types the operator maintains, each explaining one kind of transition.
PLAN_FITS = "PlanFits"
JOB_CREATED = "JobCreated"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
READY = "Running"
SCHEDULED = "Scheduled"
TRAINER_EXITED = "TrainerExited"
# Spec fields a running run may change; everything else is fixed at creation.
MUTABLE_FIELDS = frozenset({"suspend", "backoffLimit"})


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
    if phase in ("Failed", "Restarting") and exited and exited["status"] == "True":
        return exited["message"]
    if phase == "Pending" and scheduled and scheduled["status"] == "False":
        return scheduled["message"]
    return by_type.get(READY, {}).get("message", "")
