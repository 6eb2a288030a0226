"""Names, labels and metadata of the objects a run owns: what render and every backend agree on.

Fixed names derived from the run (never generateName, so a retried create is a 409, not a twin),
the labels that tie every child and every trainer pod to its run, and the owner reference that
lets the garbage collector take them with it.
"""

from __future__ import annotations

from helixrun import api
from helixrun.resolve import ResolvedRun

RUN_LABEL = "helixrun.io/run"
MANAGED_BY = {"app.kubernetes.io/managed-by": "helixrun", "app.kubernetes.io/part-of": "helixrun"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MODEL_CACHE_CLAIM = "helixrun-model-cache"


def job_name(run_name: str) -> str:
    return run_name


def config_map_name(run_name: str) -> str:
    return f"{run_name}-config"


def checkpoint_claim_name(run_name: str) -> str:
    return f"{run_name}-checkpoints"


def metrics_service_name(run_name: str) -> str:
    return f"{run_name}-metrics"


def labels(run: ResolvedRun) -> dict[str, str]:
    return {RUN_LABEL: run.name, **MANAGED_BY}


def queue_labels(run: ResolvedRun) -> dict[str, str]:
    """The Kueue label a run passes to its job: admission then owns the job's suspend and placement."""
    return {k: v for k, v in run.labels.items() if k == KUEUE_QUEUE_LABEL}


def owner_reference(run: ResolvedRun) -> list[dict]:
    if not run.uid:  # rendered offline: the API server assigns the uid at creation
        return []
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": run.name,
            "uid": run.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(run: ResolvedRun, name: str, owned: bool = True, extra_labels: dict | None = None) -> dict:
    meta = {"name": name, "namespace": run.namespace, "labels": {**labels(run), **(extra_labels or {})}}
    owners = owner_reference(run) if owned else []
    if owners:
        meta["ownerReferences"] = owners
    return meta
