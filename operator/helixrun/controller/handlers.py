"""kopf handlers: read, plan and render through pure functions, apply idempotently, patch status.

Run with `helixrun operator` (or `kopf run -m helixrun.controller.handlers`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import kopf

from helixrun import api
from helixrun import status as st
from helixrun.backends import BACKENDS, Backend, choose
from helixrun.children import KUEUE_QUEUE_LABEL, RUN_LABEL, job_name
from helixrun.controller import kube
from helixrun.controller.pods import deleted_on_purpose, gang_placement, gang_restart, termination
from helixrun.pools import load_pools
from helixrun.render import PlanRefused, RenderSettings, render_run
from helixrun.resolve import resolve
from helixrun.telemetry import operator_metrics

RUNS = (api.GROUP, api.VERSION, api.PLURAL)
# The spec as planned: later edits are judged against it, not against the previous edit.
PLANNED_SPEC = f"{api.GROUP}/planned-spec"
# The backend that made the run's job: a run keeps its job kind when the operator's choice changes.
BACKEND_ANNOTATION = f"{api.GROUP}/backend"
# Job kinds watched: the one chosen, or for auto every one the choice may fall on (the chart grants each).
CHOICE = os.environ.get("HELIXRUN_BACKEND", "auto")
WATCHED = list(BACKENDS.values()) if CHOICE == "auto" else [choose(CHOICE)]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    # Our own finalizer and annotation prefix, never kopf's defaults shared with other operators.
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Idle watch streams can freeze silently; reconnect well before that.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.execution.max_workers = int(os.environ.get("HELIXRUN_OPERATOR_WORKERS", "8"))
    memo.pools = load_pools(os.environ.get("HELIXRUN_POOLS_FILE"))
    kube.login()
    settings = RenderSettings.from_env()
    memo.backend = choose(settings.backend, served=kube.serves)
    memo.render_settings = dataclasses.replace(settings, backend=memo.backend.name)
    logger.info("helixrun operator configured with pools %s; runs become %s (%s/%s; backend %s)",
                ", ".join(sorted(memo.pools)), memo.backend.kind, memo.backend.group, memo.backend.version,
                settings.backend)


@kopf.on.startup()
async def start_metrics(memo: kopf.Memo, **_) -> None:
    # Served from kopf's own event loop: a blocked loop fails the scrape instead of looking healthy.
    memo.metrics_server = await operator_metrics.start_operator_metrics()


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_) -> None:
    await memo.metrics_server.stop()


def _backend_of(body, memo: kopf.Memo) -> Backend:
    """The backend that made the run's job, else the operator's choice."""
    return BACKENDS.get(body["metadata"].get("annotations", {}).get(BACKEND_ANNOTATION)) or memo.backend


@kopf.index("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT})
def gangs(namespace, labels, body, **_) -> dict:
    """Every trainer pod by its run: a pod's event reads its gang from here, never from a list call."""
    return {(namespace, labels[RUN_LABEL]): dict(body)}


@kopf.on.event(*RUNS)
def count_run(type, name, namespace, spec, status, **_) -> None:
    """Runs by phase and pool, GPUs requested: level-triggered, so the first listing rebuilds them."""
    if type == "DELETED":
        operator_metrics.run_gone(namespace, name)
        return
    hardware = spec.get("hardware", {})
    gpus = status.get("gpus") or hardware.get("nodes", 1) * hardware.get("gpusPerNode", 1)
    operator_metrics.run_seen(namespace, name, status.get("phase") or "Pending", hardware.get("pool", "unknown"), gpus)


def _run_object(name: str, namespace: str, uid: str, labels, spec) -> dict:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": dict(labels)},
        "spec": dict(spec),
    }


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@operator_metrics.instrumented("reconcile")
def reconcile(body, name, namespace, uid, labels, spec, status, patch, memo, **_) -> None:
    """Create the run's children once; safe to repeat (operator restarts, re-delivered events)."""
    if status.get("jobName"):
        # Planned and created before: an operator restart must neither re-plan a live run against
        # today's pools and spec nor recreate a job deleted on purpose (backoff limit exceeded).
        return
    now = st.now_iso()
    try:
        run = api.TrainingRun.from_object(_run_object(name, namespace, uid, labels, spec))
        resolved = resolve(run, memo.pools)
        backend = _backend_of(body, memo)
        children = render_run(resolved, memo.render_settings, backend)
    except api.InvalidRun as exc:
        _refuse(body, "InvalidRun", str(exc), now)
        return
    except PlanRefused as exc:
        operator_metrics.plan_refused(resolved.pool.name)
        _refuse(body, "PlanRefused", str(exc), now, plan=st.plan_summary(resolved.plan))
        return
    created = [f"{obj['kind']}/{obj['metadata']['name']}" for obj in children if kube.create_if_absent(obj)]

    generation = body["metadata"].get("generation")

    def planned(current: dict) -> dict:
        conditions = st.set_condition(current.get("conditions"), st.PLAN_FITS, True, "PlanFits", _plan_line(resolved),
                                      now, generation)
        conditions = st.set_condition(conditions, st.JOB_CREATED, True, "JobCreated",
                                      f"{backend.kind} {job_name(name)}", now, generation)
        fresh = current.get("phase") in (None, "Failed")  # new, or planned again after a refusal
        if fresh:
            conditions = st.pending(conditions, now, generation)
        update = {
            "plan": st.plan_summary(resolved.plan),
            "gpus": resolved.plan.world_size,
            "jobName": job_name(name),
            "conditions": conditions,
            "observedGeneration": generation,
        }
        if fresh:
            update |= {"phase": "Pending", "message": st.explain("Pending", conditions)}
        return update

    _update_status(namespace, name, planned)
    patch.metadata.annotations[PLANNED_SPEC] = json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    patch.metadata.annotations[BACKEND_ANNOTATION] = backend.name
    if created:
        kopf.info(body, reason="Created", message=f"created {', '.join(created)}; {_plan_line(resolved)}")


def _plan_line(resolved) -> str:
    plan = resolved.plan
    line = (
        f"{plan.method} {plan.precision} on {resolved.pool.name}: micro-batch {plan.micro_batch} x "
        f"accumulation {plan.grad_accum} x {plan.world_size} GPUs"
    )
    if plan.memory is not None:
        line += f", ~{plan.memory.total:.1f} of {resolved.pool.memory_gib:g} GiB per GPU"
    return line


def _refuse(body, reason: str, message: str, now: str, **extra) -> None:
    def refused(current: dict) -> dict:
        return st.failed(current, reason, message, now, body["metadata"].get("generation")) | extra

    _update_status(body["metadata"]["namespace"], body["metadata"]["name"], refused)
    kopf.warn(body, reason=reason, message=message)


def _update_status(namespace: str, name: str, compute) -> dict | None:
    """Every status write reads the run afresh and merges into it under a resourceVersion precondition.

    Handlers for the run, its job and its pods explain the same status concurrently; kopf's own
    patch would write conditions computed from the status as the handler first saw it, silently
    dropping what another handler wrote meanwhile.
    """
    return kube.update_run_status(namespace, name, lambda run: compute(run.get("status") or {}))


@kopf.on.update(*RUNS, field="spec")
@operator_metrics.instrumented("spec_changed")
def spec_changed(body, old, new, name, namespace, uid, labels, spec, status, patch, memo, **_) -> None:
    """Apply the fields a live run may change; refuse the rest with a condition."""
    if not status.get("jobName"):  # nothing runs yet (refused plan or invalid run): plan again
        reconcile(body=body, name=name, namespace=namespace, uid=uid, labels=labels, spec=spec, status=status,
                  patch=patch, memo=memo)
        return
    planned = json.loads(body["metadata"].get("annotations", {}).get(PLANNED_SPEC, "null")) or old or {}
    now, generation = st.now_iso(), body["metadata"].get("generation")
    # A job Kueue admitted is Kueue's to suspend: never fight it, and say so.
    kueue_suspends = KUEUE_QUEUE_LABEL in labels
    suspend_changed = (old or {}).get("suspend") != new.get("suspend")
    refused = st.refused_changes(planned, new or {}) + (["suspend (Kueue manages it)"] if suspend_changed and kueue_suspends else [])
    message = f"fixed after creation, ignored: {', '.join(refused)}" if refused else "all changes applied"
    backend = _backend_of(body, memo)
    suspending = suspend_changed and not kueue_suspends
    if suspending:
        kube.patch_job(backend, namespace, status["jobName"], backend.suspend_patch(bool(new.get("suspend"))))
        kopf.info(body, reason="Suspended" if new.get("suspend") else "Resumed", message="suspend applied to the job")
    backoff = backend.backoff_patch(new["backoffLimit"]) if new.get("backoffLimit") is not None else None
    if (old or {}).get("backoffLimit") != new.get("backoffLimit") and backoff:
        kube.patch_job(backend, namespace, status["jobName"], backoff)

    def observed(current: dict) -> dict:
        """This generation is handled: recorded only after the job got what it asks for."""
        conditions = st.set_condition(current.get("conditions"), st.SPEC_CHANGE_REFUSED, bool(refused),
                                      "ImmutableFields" if refused else "Applied", message, now, generation)
        if suspending and current.get("phase") not in st.FINISHED:
            # Not Ready until the job has stopped or started again: the job's own events say when.
            how = ("Suspending", "waiting for the job to stop") if new.get("suspend") else ("Resuming", "waiting for the job to start")
            conditions = st.set_condition(conditions, st.READY, False, *how, now, generation)
        return {"conditions": conditions, "observedGeneration": generation}

    _update_status(namespace, name, observed)
    if refused:
        kopf.warn(body, reason="SpecChangeRefused", message=message)


@operator_metrics.instrumented("job_changed")
def job_changed(type, body, namespace, backend: Backend, **_) -> None:
    """Mirror the job's conditions into the run's phase; once the job is gone, release what waited for it."""
    if type == "DELETED":
        for obj, finalizer in backend.held_for_job(body):
            kube.remove_finalizer(obj, finalizer)
        return
    state = backend.job_state(body)
    run = _update_status(
        namespace, body["metadata"]["labels"][RUN_LABEL],
        lambda current: st.mirror_job(current, state.phase, state.reason, state.message, st.now_iso()),
    )
    if run is not None and (run.get("status") or {}).get("phase") != state.phase:
        event = kopf.warn if state.phase in ("Failed", "Restarting") else kopf.info
        event(run, reason=state.phase, message=f"{state.phase}: {state.message or state.reason}")


for _backend in WATCHED:
    kopf.on.event(_backend.group, _backend.version, _backend.plural, labels={RUN_LABEL: kopf.PRESENT},
                  id=f"job_changed/{_backend.plural}")(functools.partial(job_changed, backend=_backend))


@kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT})
@operator_metrics.instrumented("pod_changed")
def pod_changed(type, body, namespace, gangs: kopf.Index, memo: kopf.Memo, **_) -> None:
    """Explain unschedulable gangs, count exits and deletions, restart whole gangs, enforce the backoff limit."""
    run_name = body["metadata"]["labels"][RUN_LABEL]
    gang = list(gangs.get((namespace, run_name), []))
    placement = gang_placement(gang)
    if placement is not None:
        _set_scheduled(namespace, run_name, *placement)
    backend = next((b for b in BACKENDS.values() if b.owns(body)), memo.backend)
    ended = termination(body, gone=type == "DELETED", backend=backend)
    if ended is not None:
        _count_end(namespace, run_name, ended, backend.peers(gang, body), backend)


def _count_end(namespace: str, run_name: str, ended, gang: list[dict], backend: Backend) -> None:
    """Count the end once, then act on it: the job's controller may already have deleted the pod."""
    now, job = st.now_iso(), job_name(run_name)
    # Read only for a deletion: whether the job is suspended, finished or going decides if it counts.
    job_object = kube.get_job(backend, namespace, job) if ended.deleted else None
    restart = gang_restart(gang, ended, backend)

    def counted(run: dict) -> dict | None:
        if ended.deleted and deleted_on_purpose(run, job_object, backend):
            return None
        return st.count_exit(run.get("status") or {}, ended, run["spec"].get("backoffLimit"), now, restart.accounted)

    run = kube.update_run_status(namespace, run_name, counted)
    if run is None:
        return  # counted before (a re-delivered event, a peer of a restarted gang), on purpose, or the run is gone
    written = counted(run)  # the same pure computation the write made from this read
    explanation = next(c["message"] for c in written["conditions"] if c["type"] == st.TRAINER_EXITED)
    if not ended.retryable:
        kopf.warn(run, reason="PermanentFailure", message=explanation)
        return
    operator_metrics.restart_observed(namespace, run_name)
    if written.get("phase") == "Failed":
        kube.delete_job(backend, namespace, job)
        kopf.warn(run, reason=st.BACKOFF_EXCEEDED, message=f"{explanation}: job {job} deleted")
        return
    for name, uid in restart.delete:
        kube.delete_pod(namespace, name, uid)
    if backend.restarts_gang:
        restarting = f"; restarting the gang ({backend.kind}'s controller recreates every pod)"
    else:
        restarting = f"; restarting the gang ({', '.join(name for name, _ in restart.delete)})" if restart.delete else ""
    kopf.warn(run, reason="Restarting", message=f"{explanation}{restarting}")


def _set_scheduled(namespace: str, run_name: str, scheduled: bool, message: str) -> None:
    reason = "Scheduled" if scheduled else "Unschedulable"

    def place(current: dict) -> dict | None:
        previous = next((c for c in current.get("conditions") or [] if c["type"] == st.SCHEDULED), None)
        if previous is None and scheduled:
            return None  # nothing was ever wrong
        if previous and previous["status"] == str(scheduled) and previous["message"] == message:
            return None  # already said
        conditions = st.set_condition(current.get("conditions"), st.SCHEDULED, scheduled, reason, message, st.now_iso(),
                                      current.get("observedGeneration"))
        return {"conditions": conditions, "message": st.explain(current.get("phase", "Pending"), conditions)}

    run = _update_status(namespace, run_name, place)
    if run is not None and not scheduled:
        kopf.warn(run, reason=reason, message=message)
