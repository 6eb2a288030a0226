"""Render a resolved run into the Kubernetes objects the operator creates.

Pure functions of (ResolvedRun, RenderSettings): no API calls, no clock. The
operator, `helixrun render` and the tests all call `render_run`, so what a user
previews is exactly what the operator applies.
"""

from __future__ import annotations

import math

from helixrun import api
from helixrun.backends import Backend, choose
from helixrun.children import (
    MANAGED_BY,
    MODEL_CACHE_CLAIM,
    RUN_LABEL,
    checkpoint_claim_name,
    config_map_name,
    metadata,
    metrics_service_name,
)
from helixrun.resolve import CONFIG_FILE, ResolvedRun
from helixrun.trainer_pod import RenderSettings

CHECKPOINT_SLACK = 1.25
MIN_CHECKPOINT_GIB = 10


class PlanRefused(ValueError):
    """The planner found no configuration that fits the run's pool."""


def config_map(run: ResolvedRun) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(run, config_map_name(run.name)),
        "data": {CONFIG_FILE: run.to_yaml()},
    }


def checkpoint_size(run: ResolvedRun) -> str:
    storage = (run.spec.get("checkpointing") or {}).get("storage") or {}
    if storage.get("size"):
        return storage["size"]
    # keepLast + best + the one being written, with slack for archival and records.
    copies = run.spec["checkpointing"]["keepLast"] + 2
    gib = math.ceil(run.plan.checkpoint_bytes * copies * CHECKPOINT_SLACK / 2**30)
    return f"{max(MIN_CHECKPOINT_GIB, gib)}Gi"


def checkpoint_claim(run: ResolvedRun) -> dict:
    checkpointing = run.spec["checkpointing"]
    storage = checkpointing.get("storage") or {}
    # Retain keeps the claim when the run is deleted: it is then not owned, so the GC leaves it.
    owned = checkpointing.get("retention", "Retain") == "Delete"
    spec = {
        # Every node of a multi-node run writes its rank's part to the same volume.
        "accessModes": ["ReadWriteMany" if run.spec["hardware"]["nodes"] > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": checkpoint_size(run)}},
    }
    if storage.get("storageClassName"):
        spec["storageClassName"] = storage["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(run, checkpoint_claim_name(run.name), owned=owned),
        "spec": spec,
    }


def model_cache_claim(namespace: str, settings: RenderSettings) -> dict:
    """The namespace's shared Hugging Face cache: outlives runs, so no owner."""
    spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": settings.model_cache_size}}}
    if settings.model_cache_storage_class:
        spec["storageClassName"] = settings.model_cache_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": MODEL_CACHE_CLAIM, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": spec,
    }


def trainer_account(namespace: str, settings: RenderSettings) -> list[dict]:
    """The trainer pods' ServiceAccount in the run's namespace, with a Role that may only patch run status.

    Shared by the namespace's runs and outliving them, so no owner; created only when absent, so an
    account the chart or a cluster admin made (annotated for workload identity, say) stays theirs.
    """
    name = settings.trainer_service_account

    def meta() -> dict:
        return {"name": name, "namespace": namespace, "labels": {**MANAGED_BY, "app.kubernetes.io/component": "trainer"}}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(),
            # All rank 0 does with its token (helixrun_trainer/run_status.py): merge-patch its run's status.
            "rules": [{"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def metrics_service(run: ResolvedRun) -> dict:
    port = run.spec["metrics"]["port"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(run, metrics_service_name(run.name)),
        "spec": {
            "clusterIP": "None",
            "selector": {RUN_LABEL: run.name},
            "ports": [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def render_run(run: ResolvedRun, settings: RenderSettings, backend: Backend | None = None) -> list[dict]:
    """Every object the operator creates for a run, in creation order."""
    if not run.plan.fits:
        raise PlanRefused(run.plan.refusal or f"run {run.name} does not fit pool {run.pool.name}")
    backend = backend or choose(settings.backend)
    account = trainer_account(run.namespace, settings) if settings.create_trainer_account else []
    # A smoke run downloads nothing, so it neither needs nor creates the namespace's model cache.
    cache = [] if run.smoke_test else [model_cache_claim(run.namespace, settings)]
    return account + cache + [
        config_map(run),
        checkpoint_claim(run),
        metrics_service(run),
        *backend.render(run, settings),
    ]
