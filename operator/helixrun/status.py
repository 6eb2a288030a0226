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
SCHEDULED = "Scheduled"
TRAINER_EXITED = "TrainerExited"
# The conventional conditions that tools read (kstatus, `kubectl wait`, Argo CD, Kueue's dashboards).
# Ready: the run is where its spec asks it to be (training with its whole gang, finished, or suspended),
# as Flux's and Knative's Ready mean; False with the reason while it waits, restarts, suspends or failed.
READY = "Ready"
# Terminal, as batch/v1 Job and TrainJob have them: present once true.
COMPLETE, FAILED = "Complete", "Failed"
# kstatus reads an abnormal-true Stalled as Failed; a failed run never gets there by itself.
STALLED = "Stalled"
SUSPENDED = "Suspended"
READY_PHASES = frozenset({"Running", "Succeeded", "Suspended"})
FINISHED = frozenset({"Succeeded", "Failed"})
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
    conditions: list[dict] | None, type_: str, status: bool, reason: str, message: str, now: str,
    generation: int | None = None,
) -> list[dict]:
    """Return conditions with one upserted; lastTransitionTime moves only when the status flips.

    `generation` is the run's metadata.generation the condition was judged against (metav1.Condition's
    observedGeneration); None keeps what the condition had.
    """
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
            if generation is not None:
                condition["observedGeneration"] = generation
        out.append(condition)
    if not found:
        condition = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now}
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
    return out


def _condition(conditions: list[dict] | None, type_: str) -> dict:
    return next((c for c in conditions or [] if c.get("type") == type_), {})


def _toggle(conditions: list[dict], type_: str, on: bool, reason: str, message: str, now: str,
            generation: int | None, off_reason: str) -> list[dict]:
    """Set a condition while it holds; once it stops holding, False (never created just to say False)."""
    if on:
        return set_condition(conditions, type_, True, reason, message, now, generation)
    if _condition(conditions, type_).get("status") == "True":
        return set_condition(conditions, type_, False, off_reason, "", now, generation)
    return conditions


def settle(phase: str, conditions: list[dict], now: str, generation: int | None) -> list[dict]:
    """The phase's terminal and suspended conditions, and Ready for a failed run, explained as the message is."""
    reason, message = explanation(phase, conditions)
    conditions = _toggle(conditions, COMPLETE, phase == "Succeeded", "Succeeded", message or "training finished",
                         now, generation, "Replanned")
    for type_ in (FAILED, STALLED):
        conditions = _toggle(conditions, type_, phase == "Failed", reason, message, now, generation, "Replanned")
    conditions = _toggle(conditions, SUSPENDED, phase == "Suspended", "Suspended", "the run's job is suspended",
                         now, generation, "Resumed")
    if phase == "Failed":
        conditions = set_condition(conditions, READY, False, reason, message, now, generation)
    return conditions


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


def explanation(phase: str, conditions: list[dict] | None) -> tuple[str, str]:
    """The reason and message that explain the phase most specifically, from the conditions held."""
    exited, scheduled = _condition(conditions, TRAINER_EXITED), _condition(conditions, SCHEDULED)
    if exited.get("status") == "True" and (
        phase == "Restarting" or (phase == "Failed" and exited["reason"] not in RESTARTED)
    ):  # a restart long since recovered from does not explain a later failure
        return exited["reason"], exited["message"]
    if phase == "Pending" and scheduled.get("status") == "False":
        return scheduled["reason"], scheduled["message"]
    for type_ in (READY, PLAN_FITS):
        condition = _condition(conditions, type_)
        if condition.get("status") == "False" or (type_ == READY and condition):
            return condition["reason"], condition.get("message", "")
    return phase, ""


def explain(phase: str, conditions: list[dict] | None) -> str:
    """The status message: the most specific explanation of the phase the conditions hold."""
    return explanation(phase, conditions)[1]


def count_exit(status: dict, ended, backoff_limit: int | None, now: str, accounted: Sequence[str] = ()) -> dict | None:
    """The status update for a trainer pod's end (its exit or its deletion), or None when it was counted.

    Counting is keyed by the end's key (a pod UID, or the gang incarnation a JobSet restart ends)
    inside a precondition-guarded write, so it is exactly once however often the event arrives;
    `accounted` are the keys of the peers whose ends the same gang restart stands for
    (gang_restart), recorded in the same write so their own events count nothing.
    Restarts beyond `backoff_limit` fail the run: the training-operator's own limit counts container
    restarts, and ExitCode replicas are recreated, never restarted.
    """
    counted = list(status.get("countedExits") or [])
    if ended.key in counted:
        return None
    counted += [uid for uid in accounted if uid not in counted]
    update: dict = {"countedExits": (counted + [ended.key])[-COUNTED_EXITS_KEPT:]}
    reason, message, phase = PERMANENT_EXIT, ended.describe(), status.get("phase", "Pending")
    if ended.retryable:
        update["restarts"] = restarts = int(status.get("restarts") or 0) + 1
        reason = RETRYABLE_EXIT if ended.exit_code is not None else POD_DELETED
        if backoff_limit is not None and restarts > backoff_limit:
            reason, phase = BACKOFF_EXCEEDED, "Failed"
            message += f"; restart {restarts} exceeds spec.backoffLimit {backoff_limit}"
            update["phase"] = phase
    generation = status.get("observedGeneration")
    conditions = set_condition(status.get("conditions"), TRAINER_EXITED, True, reason, message, now, generation)
    if phase == "Failed":
        conditions = settle(phase, conditions, now, generation)
    return update | {"conditions": conditions, "message": explain(phase, conditions)}


def mirror_job(status: dict, phase: str, reason: str, message: str, now: str) -> dict | None:
    """The run's phase and conditions from its job's state; None when nothing changes.

    A run failed for exceeding its backoff limit stays failed: its job is being deleted, and the
    events of that deletion are no news about the run.
    """
    conditions = status.get("conditions") or []
    if _condition(conditions, TRAINER_EXITED).get("reason") == BACKOFF_EXCEEDED:
        return None
    ready = _condition(conditions, READY)
    if status.get("phase") == phase and (ready.get("reason"), ready.get("message")) == (reason, message):
        return None
    generation = status.get("observedGeneration")
    conditions = set_condition(conditions, READY, phase in READY_PHASES, reason, message, now, generation)
    conditions = settle(phase, conditions, now, generation)
    return {"phase": phase, "conditions": conditions, "message": explain(phase, conditions)}


def failed(status: dict, reason: str, message: str, now: str, generation: int | None) -> dict:
    """A run that will not run: refused before any job (invalid, or no plan fits)."""
    conditions = set_condition(status.get("conditions"), PLAN_FITS, False, reason, message, now, generation)
    conditions = settle("Failed", conditions, now, generation)
    return {"phase": "Failed", "message": message, "conditions": conditions, "observedGeneration": generation}


def pending(conditions: list[dict] | None, now: str, generation: int | None) -> list[dict]:
    """A run whose job was just created (or re-created after a refusal): nothing runs yet."""
    conditions = set_condition(conditions, READY, False, "JobCreated", "waiting for the job's pods", now, generation)
    return settle("Pending", conditions, now, generation)
