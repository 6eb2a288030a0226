"""kopf handlers: read, plan and render through pure functions, apply idempotently, patch status.

Run with `helixrun operator` (or `kopf run -m helixrun.controller.handlers`).
"""

from __future__ import annotations

import logging
import os

import kopf

from helixrun import api
from helixrun import status as st
from helixrun.backends.pytorchjob import PyTorchJobBackend
from helixrun.controller import kube
from helixrun.controller.pods import RESTART_COUNTED, peers_to_restart, termination, unschedulable_message
from helixrun.pools import load_pools
from helixrun.render import KUEUE_QUEUE_LABEL, RUN_LABEL, PlanRefused, RenderSettings, job_name, render_run
from helixrun.resolve import resolve

RUNS = (api.GROUP, api.VERSION, api.PLURAL)
JOBS = (PyTorchJobBackend.group, PyTorchJobBackend.version, PyTorchJobBackend.plural)


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
    memo.render_settings = RenderSettings.from_env()
    kube.login()
    logger.info("helixrun operator configured with pools: %s", ", ".join(sorted(memo.pools)))


def _run_object(name: str, namespace: str, uid: str, labels, spec) -> dict:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": dict(labels)},
        "spec": dict(spec),
    }


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
def reconcile(body, name, namespace, uid, labels, spec, status, patch, memo, logger, **_) -> None:
    """Create the run's children once; safe to repeat (operator restarts, re-delivered events)."""
    conditions = status.get("conditions")
    now = st.now_iso()
    try:
        run = api.TrainingRun.from_object(_run_object(name, namespace, uid, labels, spec))
        resolved = resolve(run, memo.pools)
        children = render_run(resolved, memo.render_settings)
    except api.InvalidRun as exc:
        _refuse(body, patch, conditions, "InvalidRun", str(exc), now)
        return
    except PlanRefused as exc:
        patch.status["plan"] = st.plan_summary(resolved.plan)
        _refuse(body, patch, conditions, "PlanRefused", str(exc), now)
        return
    created = [f"{obj['kind']}/{obj['metadata']['name']}" for obj in children if kube.create_if_absent(obj)]
    plan = resolved.plan
    conditions = st.set_condition(conditions, st.PLAN_FITS, True, "PlanFits", _plan_line(resolved), now)
    conditions = st.set_condition(conditions, st.JOB_CREATED, True, "JobCreated", f"PyTorchJob {job_name(name)}", now)
    patch.status.update(
        {
            "plan": st.plan_summary(plan),
            "gpus": resolved.plan.world_size,
            "jobName": job_name(name),
            "conditions": conditions,
            "observedGeneration": body["metadata"].get("generation"),
        }
    )
    if not status.get("phase"):
        patch.status["phase"] = "Pending"
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


def _refuse(body, patch, conditions, reason: str, message: str, now: str) -> None:
    patch.status.update(
        {
            "phase": "Failed",
            "message": message,
            "conditions": st.set_condition(conditions, st.PLAN_FITS, False, reason, message, now),
            "observedGeneration": body["metadata"].get("generation"),
        }
    )
    kopf.warn(body, reason=reason, message=message)


@kopf.on.update(*RUNS, field="spec")
def spec_changed(body, old, new, name, namespace, uid, labels, spec, status, patch, memo, logger, **_) -> None:
    """Apply the fields a live run may change; refuse the rest with a condition."""
    if not status.get("jobName"):  # nothing runs yet (refused plan or invalid run): plan again
        reconcile(body=body, name=name, namespace=namespace, uid=uid, labels=labels, spec=spec,
                  status=status, patch=patch, memo=memo, logger=logger)
        return
    now = st.now_iso()
    refused = st.refused_changes(old or {}, new or {})
    message = f"fixed after creation, ignored: {', '.join(refused)}" if refused else "all changes applied"
    patch.status["conditions"] = st.set_condition(
        status.get("conditions"), st.SPEC_CHANGE_REFUSED, bool(refused), "ImmutableFields" if refused else "Applied",
        message, now,
    )
    if refused:
        kopf.warn(body, reason="SpecChangeRefused", message=message)
    backend = PyTorchJobBackend()
    # A job Kueue admitted is Kueue's to suspend: never fight it.
    if (old or {}).get("suspend") != new.get("suspend") and KUEUE_QUEUE_LABEL not in labels:
        kube.patch_job(backend, namespace, status["jobName"], backend.suspend_patch(bool(new.get("suspend"))))
        kopf.info(body, reason="Suspended" if new.get("suspend") else "Resumed", message="suspend applied to the job")
    if (old or {}).get("backoffLimit") != new.get("backoffLimit") and new.get("backoffLimit") is not None:
        kube.patch_job(backend, namespace, status["jobName"], backend.backoff_patch(new["backoffLimit"]))


@kopf.on.event(*JOBS, labels={RUN_LABEL: kopf.PRESENT})
def job_changed(type, body, namespace, logger, **_) -> None:
    """Mirror the job's conditions into the run's phase."""
    if type == "DELETED":
        return
    run_name = body["metadata"]["labels"][RUN_LABEL]
    run = kube.get_run(namespace, run_name)
    if run is None:
        return
    state = PyTorchJobBackend().job_state(body)
    current = run.get("status") or {}
    if current.get("phase") == state.phase:
        return
    now = st.now_iso()
    running = state.phase in ("Running", "Succeeded")
    conditions = st.set_condition(current.get("conditions"), st.READY, running, state.reason, state.message, now)
    update = {"phase": state.phase, "conditions": conditions, "message": st.explain(state.phase, conditions, state.message)}
    kube.patch_run_status(namespace, run_name, update)
    event = kopf.warn if state.phase in ("Failed", "Restarting") else kopf.info
    event(run, reason=state.phase, message=f"{state.phase}: {state.message or state.reason}")


@kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT})
def pod_changed(type, body, namespace, memo, logger, **_) -> None:
    """Count restarts, restart whole gangs, and explain permanent failures and unschedulable pods."""
    if type == "DELETED" or body["metadata"].get("deletionTimestamp"):
        return  # a pod being deleted (by us, for a gang restart) is no new failure
    run_name = body["metadata"]["labels"][RUN_LABEL]
    pending = unschedulable_message(body)
    if pending:
        _set_scheduled(namespace, run_name, False, "Unschedulable", pending)
        return
    if (body.get("status") or {}).get("phase") == "Running":
        _set_scheduled(namespace, run_name, True, "Scheduled", "every pod is placed")
    ended = termination(body)
    if ended is None or body["metadata"].get("annotations", {}).get(RESTART_COUNTED):
        return
    if not kube.annotate_pod(namespace, ended.pod, {RESTART_COUNTED: str(ended.exit_code)}):
        return  # already gone: the event that counted it came first
    run = kube.get_run(namespace, run_name)
    if run is None:
        return
    current = run.get("status") or {}
    reason = "RetryableExit" if ended.retryable else "PermanentExit"
    conditions = st.set_condition(current.get("conditions"), st.TRAINER_EXITED, True, reason, ended.describe(), st.now_iso())
    if not ended.retryable:
        message = st.explain(current.get("phase", "Pending"), conditions, current.get("message", ""))
        kube.patch_run_status(namespace, run_name, {"conditions": conditions, "message": message})
        kopf.warn(run, reason="PermanentFailure", message=ended.describe())
        return
    job = body["metadata"]["labels"].get("training.kubeflow.org/job-name", run_name)
    peers = peers_to_restart(_pod_dicts(namespace, job), ended.pod)
    for peer in peers:
        kube.delete_pod(namespace, peer)
    restarts = int(current.get("restarts") or 0) + 1
    kube.patch_run_status(namespace, run_name, {"restarts": restarts, "conditions": conditions})
    gang = f"; restarting the gang ({', '.join(peers)})" if peers else ""
    kopf.warn(run, reason="Restarting", message=f"{ended.describe()}{gang}; restart {restarts}")


def _pod_dicts(namespace: str, job: str) -> list[dict]:
    from kubernetes import client

    serialize = client.ApiClient().sanitize_for_serialization
    return [serialize(p) for p in kube.pods_of_job(namespace, job)]


def _set_scheduled(namespace: str, run_name: str, scheduled: bool, reason: str, message: str) -> None:
    run = kube.get_run(namespace, run_name)
    if run is None:
        return
    current = run.get("status") or {}
    previous = next((c for c in current.get("conditions") or [] if c["type"] == st.SCHEDULED), None)
    if previous is None and scheduled or previous and previous["status"] == str(scheduled) and previous["message"] == message:
        return  # nothing to explain, or already explained
    conditions = st.set_condition(current.get("conditions"), st.SCHEDULED, scheduled, reason, message, st.now_iso())
    phase = current.get("phase", "Pending")
    fallback = "" if current.get("message") == (previous or {}).get("message") else current.get("message", "")
    kube.patch_run_status(namespace, run_name, {"conditions": conditions, "message": st.explain(phase, conditions, fallback)})
    if not scheduled:
        kopf.warn(run, reason=reason, message=message)
