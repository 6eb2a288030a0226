"""Kubeflow PyTorchJob (training-operator v1.9, kubeflow.org/v1) backend."""

from __future__ import annotations

from helixrun.backends.base import JobState
from helixrun.children import job_name, metadata, queue_labels
from helixrun.resolve import ResolvedRun
from helixrun.trainer_pod import OWN_ENV, TRAINER_UID, RenderSettings, pod_template  # noqa: F401  (the image tests read them here)

CONTAINER = "pytorch"  # the training-operator's webhook requires this name
RENDEZVOUS_PORT = 23456
JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # on every pod the training-operator makes
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


def _template(run: ResolvedRun, settings: RenderSettings) -> dict:
    port = {"name": "pytorchjob-port", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    return pod_template(run, settings, CONTAINER, [port])


class PyTorchJobBackend:
    name = "pytorchjob"
    group = "kubeflow.org"
    version = "v1"
    kind = "PyTorchJob"
    plural = "pytorchjobs"
    container = CONTAINER
    # The training-operator recreates only the pod that failed or went: the operator takes the peers.
    restarts_gang = False

    def render(self, run: ResolvedRun, settings: RenderSettings) -> list[dict]:
        hardware = run.spec["hardware"]
        replicas = {"Master": {"replicas": 1, "restartPolicy": RESTART_POLICY, "template": _template(run, settings)}}
        if hardware["nodes"] > 1:
            replicas["Worker"] = {
                "replicas": hardware["nodes"] - 1,
                "restartPolicy": RESTART_POLICY,
                "template": _template(run, settings),
            }
        return [{
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": metadata(run, job_name(run.name), extra_labels=queue_labels(run)),
            "spec": {
                "nprocPerNode": str(hardware["gpusPerNode"]),
                "runPolicy": {
                    "backoffLimit": run.spec["backoffLimit"],
                    "cleanPodPolicy": "None",
                    "suspend": bool(run.spec.get("suspend", False)),
                },
                "pytorchReplicaSpecs": replicas,
            },
        }]

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

    def held_for_job(self, job: dict) -> list[tuple[dict, str]]:
        return []

    def backoff_patch(self, limit: int) -> dict:
        return {"spec": {"runPolicy": {"backoffLimit": limit}}}

    def owns(self, pod: dict) -> bool:
        return JOB_NAME_LABEL in (pod["metadata"].get("labels") or {})

    def end_key(self, pod: dict) -> str:
        return pod["metadata"]["uid"]

    def peers(self, pods: list[dict], pod: dict) -> list[dict]:
        return pods  # one incarnation: recreated pods keep their names, and gang_restart tells them apart
