"""Kubeflow PyTorchJob (training-operator v1.9, kubeflow.org/v1) backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from helixrun import quantity
from helixrun.backends import JobState
from helixrun.pools import GPU_RESOURCE, HostShare
from helixrun.resolve import CONFIG_DIR, CONFIG_FILE, POD_PATHS
from helixrun.telemetry import scrape

if TYPE_CHECKING:
    from helixrun.render import RenderSettings
    from helixrun.resolve import ResolvedRun

CONTAINER = "pytorch"  # the training-operator's webhook requires this name
RENDEZVOUS_PORT = 23456
# The trainer's exit-code contract under restartPolicy ExitCode: 1-127 permanent, 128+ retryable.
RESTART_POLICY = "ExitCode"
# Training-operator condition type -> our phase; the newest true condition wins.
PHASES = {
    "Created": "Pending",
    "Running": "Running",
    "Restarting": "Restarting",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Suspended": "Suspended",
}
TRAINER_UID = 1000
# The container's command. Our launcher, not torchrun: torchrun exits 1 whatever its child's code, and the
# container's code is what restartPolicy ExitCode reads (trainer/helixrun_trainer/launch.py).
COMMAND = ["helixrun-launch", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
# Env we set unless the user already did (the training-operator owns PET_*, MASTER_*, RANK, WORLD_SIZE).
OWN_ENV = {
    "HF_HOME": f"{POD_PATHS.model_cache}/huggingface",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TORCH_EXTENSIONS_DIR": "/tmp/torch_extensions",
    "TRITON_CACHE_DIR": "/tmp/triton",
}


def _env(run: "ResolvedRun") -> list[dict]:
    user = list(run.spec.get("env") or [])
    taken = {e["name"] for e in user}
    ours = [{"name": k, "value": v} for k, v in OWN_ENV.items() if k not in taken]
    identity = [
        {"name": "HELIXRUN_RUN", "value": run.name},
        {"name": "HELIXRUN_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return user + ours + identity


def _resources(run: "ResolvedRun") -> dict:
    """The host share of the GPUs the pod uses; memory limited to it (CPU not: throttling stalls collectives)."""
    gpus = run.spec["hardware"]["gpusPerNode"]
    share = HostShare.of(run.pool, run.typed_spec.hardware)
    memory = quantity.memory(share.memory * gpus)
    return {
        "requests": {"cpu": quantity.cpu(share.cpu * gpus), "memory": memory},
        "limits": {"memory": memory, GPU_RESOURCE: gpus},
    }


def _volumes(run: "ResolvedRun") -> tuple[list[dict], list[dict]]:
    from helixrun.render import MODEL_CACHE_CLAIM, checkpoint_claim_name, config_map_name

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


def pod_template(run: "ResolvedRun", settings: "RenderSettings") -> dict:
    from helixrun.render import labels

    gpus = run.spec["hardware"]["gpusPerNode"]
    port = run.spec["metrics"]["port"]
    volumes, mounts = _volumes(run)
    container = {
        "name": CONTAINER,
        "image": run.spec.get("image") or settings.trainer_image,
        # The launcher reads nodes, node rank, processes per node and the master from the PET_* env the
        # training-operator injects, starts one trainer per GPU and exits with the first failing one's code.
        "command": list(COMMAND),
        "env": _env(run),
        # One exporter per process: local rank i serves port + i (docs/METRICS.md).
        "ports": scrape.container_ports(port, gpus)
        + [{"name": "pytorchjob-port", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}],
        "resources": _resources(run),
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


class PyTorchJobBackend:
    group = "kubeflow.org"
    version = "v1"
    kind = "PyTorchJob"
    plural = "pytorchjobs"

    def render_job(self, run: "ResolvedRun", settings: "RenderSettings") -> dict:
        from helixrun.render import KUEUE_QUEUE_LABEL, job_name, metadata

        hardware = run.spec["hardware"]
        template = pod_template(run, settings)
        replicas = {"Master": {"replicas": 1, "restartPolicy": RESTART_POLICY, "template": template}}
        if hardware["nodes"] > 1:
            replicas["Worker"] = {
                "replicas": hardware["nodes"] - 1,
                "restartPolicy": RESTART_POLICY,
                "template": pod_template(run, settings),
            }
        queue = {k: v for k, v in run.labels.items() if k == KUEUE_QUEUE_LABEL}
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": metadata(run, job_name(run.name), extra_labels=queue),
            "spec": {
                "nprocPerNode": str(hardware["gpusPerNode"]),
                "runPolicy": {
                    "backoffLimit": run.spec["backoffLimit"],
                    "cleanPodPolicy": "None",
                    "suspend": bool(run.spec.get("suspend", False)),
                },
                "pytorchReplicaSpecs": replicas,
            },
        }

    def job_state(self, job: dict) -> JobState:
        conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
        if not conditions:
            return JobState("Pending", "JobCreated", "waiting for the training-operator")
        # Conditions set in the same second (Created, then Running) tie on time: later stages win.
        stages = list(PHASES)
        latest = max(
            conditions,
            key=lambda c: (c.get("lastTransitionTime") or c.get("lastUpdateTime") or "", stages.index(c["type"])
                           if c["type"] in stages else -1),
        )
        # Terminal and suspended states dominate a stale Running condition.
        for kind in ("Failed", "Succeeded", "Suspended"):
            dominant = next((c for c in conditions if c["type"] == kind), None)
            if dominant:
                latest = dominant
                break
        phase = PHASES.get(latest["type"], "Pending")
        if phase == "Running":
            # The master runs before the whole gang is placed; DDP trains only when every rank is up.
            desired = sum(r.get("replicas", 1) for r in job["spec"]["pytorchReplicaSpecs"].values())
            active = sum(r.get("active", 0) for r in (job.get("status") or {}).get("replicaStatuses", {}).values())
            if active < desired:
                return JobState("Pending", "GangIncomplete", f"{active} of {desired} pods running")
        return JobState(phase, latest.get("reason", latest["type"]), latest.get("message", ""))

    def suspend_patch(self, suspend: bool) -> dict:
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def backoff_patch(self, limit: int) -> dict:
        return {"spec": {"runPolicy": {"backoffLimit": limit}}}
