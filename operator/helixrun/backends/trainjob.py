"""Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1, running on JobSet) backend.

Each run gets a TrainingRuntime of its own, named and owned like its job: the JobSet template
in it is the run's trainer pod exactly as rendered (ports, volumes, pool, grace period), which
a shared ClusterTrainingRuntime could only approximate through runtime patches, and it needs
no cluster-scoped object that an operator started by hand could not install. JobSet's failure
policy carries the exit-code contract: a permanent exit (1-127) fails the job through the Job's
pod failure policy; any other end (a retryable exit, a deleted or evicted pod) fails the Job
(backoffLimit 0), and JobSet recreates every Job of the gang. spec.backoffLimit is the operator's
to enforce (it may change on a live run, a JobSet's failure policy may not), so those restarts
ignore JobSet's own maxRestarts.

The runtime carries a finalizer of ours until its TrainJob is gone: Trainer's webhook refuses every
update of a TrainJob whose runtime no longer exists, including the garbage collector's removal of
`foregroundDeletion`, so a run deleted in the foreground (Argo CD, `--cascade=foreground`) would
otherwise leave its TrainJob terminating for ever.
"""

from __future__ import annotations

from helixrun import api
from helixrun.backends.base import JobState
from helixrun.children import job_name, metadata, queue_labels
from helixrun.resolve import ResolvedRun
from helixrun.trainer_pod import RenderSettings, pod_template

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
# Trainer v2's torch plugin injects PET_* into the container `node` of the replicated job whose
# template carries the trainer ancestor label (pkg/constants in kubeflow/trainer).
CONTAINER = REPLICATED_JOB = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
# JobSet's labels on every pod: which JobSet and which incarnation of it (restarts recreate all Jobs).
JOBSET_UID_LABEL = "jobset.sigs.k8s.io/jobset-uid"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
PERMANENT_EXIT_CODES = list(range(1, 128))
RUNTIME_FINALIZER = f"{api.GROUP}/trainjob-runtime"


class TrainJobBackend:
    name = "trainjob"
    group = GROUP
    version = VERSION
    kind = "TrainJob"
    plural = "trainjobs"
    container = CONTAINER
    restarts_gang = True  # JobSet recreates every Job when one fails

    def render(self, run: ResolvedRun, settings: RenderSettings) -> list[dict]:
        return [self._runtime(run, settings), self._train_job(run)]

    def _runtime(self, run: ResolvedRun, settings: RenderSettings) -> dict:
        template = pod_template(run, settings, CONTAINER)
        template["spec"]["restartPolicy"] = "Never"  # a pod failure policy needs it; JobSet restarts the gang
        job = {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": PERMANENT_EXIT_CODES},
            }]},
            "template": template,
        }
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingRuntime",
            "metadata": metadata(run, job_name(run.name)) | {"finalizers": [RUNTIME_FINALIZER]},
            "spec": {
                "mlPolicy": {"numNodes": run.spec["hardware"]["nodes"], "torch": {}},
                "template": {"spec": {
                    "failurePolicy": {
                        "restartStrategy": "Recreate",
                        "rules": [
                            {"name": "PermanentExit", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
                            {"name": "RetryableEnd", "action": "RestartJobSetAndIgnoreMaxRestarts"},
                        ],
                    },
                    "replicatedJobs": [{
                        "name": REPLICATED_JOB,
                        "template": {"metadata": {"labels": {ANCESTOR_LABEL: "trainer"}}, "spec": job},
                    }],
                }},
            },
        }

    def _train_job(self, run: ResolvedRun) -> dict:
        hardware = run.spec["hardware"]
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": metadata(run, job_name(run.name), extra_labels=queue_labels(run)),
            "spec": {
                "runtimeRef": {"apiGroup": GROUP, "kind": "TrainingRuntime", "name": job_name(run.name)},
                "trainer": {"numNodes": hardware["nodes"], "numProcPerNode": hardware["gpusPerNode"]},
                "suspend": bool(run.spec.get("suspend", False)),
            },
        }

    def job_state(self, job: dict) -> JobState:
        status = job.get("status") or {}
        held = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        for kind, phase in (("Failed", "Failed"), ("Complete", "Succeeded"), ("Suspended", "Suspended")):
            if kind in held:
                return JobState(phase, held[kind].get("reason") or kind, held[kind].get("message", ""))
        jobs = [j for j in status.get("jobsStatus") or [] if j.get("name") == REPLICATED_JOB]
        if not jobs:
            return JobState("Pending", "JobCreated", "waiting for Kubeflow Trainer and JobSet")
        # JobSet counts a Job ready once every one of its pods is: DDP trains only when every rank is up.
        if jobs[0].get("ready", 0) >= 1:
            return JobState("Running", "GangRunning", f"every pod of {self.kind} {job['metadata']['name']} is ready")
        return JobState("Pending", "GangIncomplete", "waiting for every pod of the gang to be ready")

    def suspend_patch(self, suspend: bool) -> dict:
        return {"spec": {"suspend": suspend}}

    def held_for_job(self, job: dict) -> list[tuple[dict, str]]:
        meta = job["metadata"]
        runtime = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRuntime",
                   "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}
        return [(runtime, RUNTIME_FINALIZER)]

    def backoff_patch(self, limit: int) -> None:
        return None  # the operator counts restarts against spec.backoffLimit itself

    def owns(self, pod: dict) -> bool:
        return JOBSET_UID_LABEL in (pod["metadata"].get("labels") or {})

    def end_key(self, pod: dict) -> str:
        """One gang incarnation ends once: JobSet's restart takes every pod of it, whichever went first."""
        labels = pod["metadata"].get("labels") or {}
        if JOBSET_UID_LABEL in labels and RESTART_ATTEMPT_LABEL in labels:
            return f"{labels[JOBSET_UID_LABEL]}/restart-{labels[RESTART_ATTEMPT_LABEL]}"
        return pod["metadata"]["uid"]

    def peers(self, pods: list[dict], pod: dict) -> list[dict]:
        key = self.end_key(pod)
        return [p for p in pods if self.end_key(p) == key]
