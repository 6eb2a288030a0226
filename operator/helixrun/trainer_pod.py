"""The trainer pod every backend runs: one container, `helixrun-launch`, the run's volumes and pool.

Whichever controller makes the pods (the training-operator from a PyTorchJob, JobSet from a
TrainJob), they are the same pod: the backend names the container and adds its rendezvous port.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from helixrun import quantity
from helixrun.children import MODEL_CACHE_CLAIM, checkpoint_claim_name, config_map_name, labels
from helixrun.pools import GPU_RESOURCE, HostShare
from helixrun.resolve import CONFIG_DIR, CONFIG_FILE, POD_PATHS, ResolvedRun
from helixrun.telemetry import scrape

TRAINER_UID = 1000
# The container's command. Our launcher, not torchrun: torchrun exits 1 whatever its child's code, and the
# container's code is what the exit-code contract reads (trainer/helixrun_trainer/launch.py).
COMMAND = ["helixrun-launch", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
# Env we set unless the user already did (the job's controller owns PET_*, MASTER_*, RANK, WORLD_SIZE).
OWN_ENV = {
    "HF_HOME": f"{POD_PATHS.model_cache}/huggingface",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TORCH_EXTENSIONS_DIR": "/tmp/torch_extensions",
    "TRITON_CACHE_DIR": "/tmp/triton",
}
BACKEND_CHOICES = ("pytorchjob", "trainjob", "auto")


@dataclass(frozen=True)
class RenderSettings:
    """What the cluster installation decides (Helm values, passed to the operator as env)."""

    trainer_image: str = "ghcr.io/helixrun/trainer:0.1.0"
    trainer_service_account: str = "helixrun-trainer"
    # Off where a platform team manages RBAC (the chart's rbac.create=false): the account must then exist.
    create_trainer_account: bool = True
    model_cache_size: str = "200Gi"
    model_cache_storage_class: str | None = None
    # Which job kind runs the pods; the operator turns auto into the one whose CRD the cluster serves.
    backend: str = "auto"

    @classmethod
    def from_env(cls, env=os.environ) -> "RenderSettings":
        defaults = cls()
        create_account = env.get("HELIXRUN_CREATE_TRAINER_ACCOUNT", "true")
        if create_account not in ("true", "false"):
            raise ValueError(f"HELIXRUN_CREATE_TRAINER_ACCOUNT must be true or false, got {create_account!r}")
        backend = env.get("HELIXRUN_BACKEND", defaults.backend)
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"HELIXRUN_BACKEND must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
        return cls(
            trainer_image=env.get("HELIXRUN_TRAINER_IMAGE", defaults.trainer_image),
            trainer_service_account=env.get("HELIXRUN_TRAINER_SERVICE_ACCOUNT", defaults.trainer_service_account),
            create_trainer_account=create_account == "true",
            model_cache_size=env.get("HELIXRUN_MODEL_CACHE_SIZE", defaults.model_cache_size),
            model_cache_storage_class=env.get("HELIXRUN_MODEL_CACHE_STORAGE_CLASS") or None,
            backend=backend,
        )


def _env(run: ResolvedRun) -> list[dict]:
    user = list(run.spec.get("env") or [])
    taken = {e["name"] for e in user}
    ours = [{"name": k, "value": v} for k, v in OWN_ENV.items() if k not in taken]
    identity = [
        {"name": "HELIXRUN_RUN", "value": run.name},
        {"name": "HELIXRUN_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return user + ours + identity


def resources(run: ResolvedRun) -> dict:
    """The host share of the GPUs the pod uses; memory limited to it (CPU not: throttling stalls collectives)."""
    gpus = run.spec["hardware"]["gpusPerNode"]
    share = HostShare.of(run.pool, run.typed_spec.hardware)
    memory = quantity.memory(share.memory * gpus)
    return {
        "requests": {"cpu": quantity.cpu(share.cpu * gpus), "memory": memory},
        "limits": {"memory": memory, GPU_RESOURCE: gpus},
    }


def _volumes(run: ResolvedRun) -> tuple[list[dict], list[dict]]:
    # A smoke run downloads nothing: no claim on the namespace's model cache, no data claim.
    cache = {"emptyDir": {}} if run.smoke_test else {"persistentVolumeClaim": {"claimName": MODEL_CACHE_CLAIM}}
    volumes = [
        {"name": "config", "configMap": {"name": config_map_name(run.name)}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": checkpoint_claim_name(run.name)}},
        {"name": "model-cache", **cache},
        # NCCL and DataLoader workers share tensors through /dev/shm; the default 64 MiB is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "checkpoints", "mountPath": POD_PATHS.checkpoints},
        {"name": "model-cache", "mountPath": POD_PATHS.model_cache},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    data = run.spec.get("data") or {}
    if data.get("pvc") and not run.smoke_test:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": data["pvc"], "readOnly": True}})
        mounts.append({"name": "data", "mountPath": POD_PATHS.data, "readOnly": True})
    return volumes, mounts


def pod_template(run: ResolvedRun, settings: RenderSettings, container_name: str, ports: list[dict] = ()) -> dict:
    """The trainer pod; `container_name` and rendezvous `ports` are what the job's controller expects."""
    gpus = run.spec["hardware"]["gpusPerNode"]
    port = run.spec["metrics"]["port"]
    volumes, mounts = _volumes(run)
    container = {
        "name": container_name,
        "image": run.spec.get("image") or settings.trainer_image,
        # The launcher reads nodes, node rank, processes per node and the master from the PET_* env the
        # job's controller injects, starts one trainer per GPU and exits with the first failing one's code.
        "command": list(COMMAND),
        "env": _env(run),
        # One exporter per process: local rank i serves port + i (docs/METRICS.md).
        "ports": scrape.container_ports(port, gpus) + list(ports),
        "resources": resources(run),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "metadata": {
            "labels": labels(run),
            "annotations": scrape.scrape_annotations(port),
        },
        "spec": {
            "serviceAccountName": settings.trainer_service_account,
            "terminationGracePeriodSeconds": run.plan.grace_period_seconds,
            "nodeSelector": dict(run.pool.node_selector),
            "tolerations": [dict(t) for t in run.pool.tolerations],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": TRAINER_UID,
                "runAsGroup": TRAINER_UID,
                "fsGroup": TRAINER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }
