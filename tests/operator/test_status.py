"""Status computation and pod reading: the operator's pure decisions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixrun import status
from helixrun.backends.pytorchjob import PyTorchJobBackend
from helixrun.controller import pods
from helixrun.controller.pods import deleted_on_purpose, gang_placement, unschedulable_message

PYTORCHJOB = PyTorchJobBackend()


def termination(body: dict, gone: bool = False):
    return pods.termination(body, gone, backend=PYTORCHJOB)


def gang_restart(gang: list[dict], ended):
    return pods.gang_restart(gang, ended, PYTORCHJOB)


def test_condition_transition_time_moves_only_when_status_flips():
    conditions = status.set_condition([], "PlanFits", True, "Fits", "ok", "t1")
    conditions = status.set_condition(conditions, "PlanFits", True, "Fits", "still ok", "t2")
    assert conditions == [{"type": "PlanFits", "status": "True", "reason": "Fits", "message": "still ok", "lastTransitionTime": "t1"}]
    conditions = status.set_condition(conditions, "PlanFits", False, "Refused", "no", "t3")
    assert conditions[0]["lastTransitionTime"] == "t3" and conditions[0]["status"] == "False"


@given(st.lists(st.sampled_from(["A", "B", "C"]), max_size=12), st.booleans())
def test_conditions_stay_unique_by_type(types, value):
    conditions: list = []
    for i, kind in enumerate(types):
        conditions = status.set_condition(conditions, kind, value, "r", "m", str(i))
    assert sorted(c["type"] for c in conditions) == sorted(set(types))


def test_only_suspend_and_backoff_may_change_on_a_live_run():
    old = {"suspend": False, "backoffLimit": 3, "training": {"maxSteps": 10, "optimizer": {"lr": 1e-4}}}
    new = {"suspend": True, "backoffLimit": 5, "training": {"maxSteps": 10, "optimizer": {"lr": 2e-4}}}
    assert status.refused_changes(old, new) == ["training.optimizer.lr"]
    assert status.refused_changes(old, {**old, "suspend": True}) == []


def job(*conditions, replicas=1, active=1):
    return {
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}, **({"Worker": {"replicas": replicas - 1}} if replicas > 1 else {})}},
        "status": {
            "conditions": [dict(type=t, status=s, lastTransitionTime=ts, reason=t + "Reason") for t, s, ts in conditions],
            "replicaStatuses": {"Master": {"active": min(active, 1)}, "Worker": {"active": max(active - 1, 0)}},
        },
    }


def test_job_phase_follows_the_newest_true_condition():
    backend = PyTorchJobBackend()
    assert backend.job_state({}).phase == "Pending"
    assert backend.job_state(job(("Created", "True", "1"), ("Running", "True", "2"))).phase == "Running"
    assert backend.job_state(job(("Running", "True", "2"), ("Restarting", "True", "3"))).phase == "Restarting"
    assert backend.job_state(job(("Running", "True", "4"), ("Restarting", "False", "3"))).phase == "Running"
    assert backend.job_state(job(("Running", "True", "5"), ("Failed", "True", "4"))).phase == "Failed"
    assert backend.job_state(job(("Suspended", "True", "1"), ("Created", "True", "2"))).phase == "Suspended"


def pod(name, phase="Running", code=None, scheduled=True, deleting=False, disrupted=None, uid=None):
    body = {"metadata": {"name": name, "uid": uid or f"uid-{name}"}, "spec": {"nodeName": "a800-0"} if scheduled else {},
            "status": {"phase": phase, "conditions": []}}
    if code is not None:
        body["status"]["containerStatuses"] = [{"name": "pytorch", "state": {"terminated": {"exitCode": code, "reason": "Error", "message": "NCCL timeout"}}}]
    if not scheduled:
        body["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "message": "0/6 nodes: Insufficient nvidia.com/gpu"})
    if disrupted:
        body["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disrupted,
                                             "message": "Eviction API: evicting"})
    if deleting:
        body["metadata"]["deletionTimestamp"] = "now"
    return body


def test_exit_codes_follow_the_contract():
    assert termination(pod("m", "Running")) is None
    assert termination(pod("m", "Failed", 143)).retryable
    assert not termination(pod("m", "Failed", 2)).retryable
    assert "code 2 (permanent): NCCL timeout" in termination(pod("m", "Failed", 2)).describe()


@pytest.mark.parametrize(("body", "gone", "expected"), [
    (pod("m"), False, None),  # running
    (pod("m", "Succeeded", 0, deleting=True), True, None),  # ended well, whoever removes it
    (pod("m", "Failed"), False, None),  # failed before its trainer started: no exit to read
    (pod("m", "Failed", 137), False, (137, True, None)),
    (pod("m", "Failed", 2), False, (2, False, None)),
    (pod("m", deleting=True), False, (None, True, "deleted")),  # kubectl delete pod: SIGTERM on its way
    (pod("m"), True, (None, True, "deleted")),  # force-deleted: only its DELETED event tells
    (pod("m", deleting=True, disrupted="EvictionByEvictionAPI"), False, (None, True, "EvictionByEvictionAPI")),
    (pod("m", "Pending", scheduled=False, disrupted="PreemptionByScheduler"), True, (None, True, "PreemptionByScheduler")),
    # Deleted, then SIGTERM, checkpoint, 143: the exit code is the trainer's own word on it.
    (pod("m", "Failed", 143, deleting=True, disrupted="DeletionByTaintManager"), False, (143, True, "DeletionByTaintManager")),
])
def test_a_pod_ends_by_its_trainers_exit_or_by_its_deletion(body, gone, expected):
    ended = termination(body, gone=gone)
    assert (ended and (ended.exit_code, ended.retryable, ended.deletion)) == expected


def test_a_deletion_says_which_pod_went_and_why():
    evicted = termination(pod("j-worker-0", deleting=True, disrupted="EvictionByEvictionAPI"))
    assert evicted.describe() == "pod j-worker-0 was deleted: EvictionByEvictionAPI (Eviction API: evicting), retryable"
    assert termination(pod("j-master-0"), gone=True).describe() == "pod j-master-0 was deleted, retryable"
    saved = termination(pod("j-master-0", "Failed", 143, deleting=True))
    assert saved.describe() == "pod j-master-0 exited with code 143 (retryable): NCCL timeout; it was being deleted"


def a_run(phase="Running", suspend=False, deleting=False):
    run = {"metadata": {"name": "r"}, "spec": {"suspend": suspend}, "status": {"phase": phase}}
    if deleting:
        run["metadata"]["deletionTimestamp"] = "now"
    return run


def a_job(*conditions, suspend=False, deleting=False):
    body = job(*conditions)
    body["metadata"] = {"name": "r", **({"deletionTimestamp": "now"} if deleting else {})}
    body["spec"]["runPolicy"] = {"suspend": suspend}
    return body


RUNNING_JOB = a_job(("Running", "True", "1"))


@pytest.mark.parametrize(("run", "job_now", "on_purpose"), [
    (a_run(), RUNNING_JOB, False),  # eviction, preemption, a lost node, kubectl delete pod
    (a_run("Pending"), a_job(("Created", "True", "1")), False),
    (a_run("Restarting"), a_job(("Restarting", "True", "1")), False),
    (a_run(deleting=True), RUNNING_JOB, True),  # foreground deletion: the run waits for its pods to go
    (a_run(suspend=True), RUNNING_JOB, True),  # suspended; the job is patched next
    (a_run("Succeeded"), RUNNING_JOB, True),
    (a_run("Failed"), RUNNING_JOB, True),  # e.g. the backoff limit exceeded and the job deleted
    (a_run(), None, True),  # the job is gone: the garbage collector takes its pods
    (a_run(), a_job(("Running", "True", "1"), deleting=True), True),
    (a_run(), a_job(("Running", "True", "1"), suspend=True), True),  # Kueue suspends the job, not the run
    (a_run(), a_job(("Running", "True", "1"), ("Suspended", "True", "2")), True),
    (a_run(), a_job(("Running", "True", "1"), ("Succeeded", "True", "2")), True),
    (a_run(), a_job(("Running", "True", "1"), ("Failed", "True", "2")), True),
])
def test_only_a_deletion_nobody_on_the_runs_side_asked_for_counts(run, job_now, on_purpose):
    assert deleted_on_purpose(run, job_now, PyTorchJobBackend()) is on_purpose


def test_a_retryable_end_restarts_the_gang_and_stands_for_every_peer_it_takes():
    gang = [pod("j-master-0"), pod("j-worker-0", deleting=True), pod("j-worker-1", "Failed", 137),
            pod("j-worker-2", "Failed", 1),  # its permanent exit must fail the run, not vanish in a restart
            pod("j-worker-3", "Pending", scheduled=False), pod("j-worker-4", deleting=True, disrupted="DeletionByTaintManager"),
            pod("j-worker-5", "Succeeded", 0)]
    restart = gang_restart(gang, termination(pod("j-worker-0", deleting=True)))
    assert restart.delete == (("j-master-0", "uid-j-master-0"), ("j-worker-3", "uid-j-worker-3"))
    assert restart.accounted == ("uid-j-master-0", "uid-j-worker-1", "uid-j-worker-3", "uid-j-worker-4")
    # The training-operator recreated the deleted master under its name before the event was handled.
    recreated = [pod("j-master-0", uid="new"), pod("j-worker-0")]
    restart = gang_restart(recreated, termination(pod("j-master-0"), gone=True))
    assert restart.delete == (("j-worker-0", "uid-j-worker-0"),) and restart.accounted == ("uid-j-worker-0",)
    assert gang_restart(gang, termination(pod("j-worker-2", "Failed", 1))) == gang_restart([], termination(pod("m", "Failed", 1)))
    assert gang_restart(gang, termination(pod("j-worker-2", "Failed", 1))).delete == ()


def test_a_gang_restart_counts_once_whichever_rank_is_seen_first():
    master_gone, worker_lost = pod("j-master-0", deleting=True), pod("j-worker-0", "Failed", 134)
    for first, second in ((master_gone, worker_lost), (worker_lost, master_gone)):
        gang = [master_gone, worker_lost]
        ended = termination(first)
        state = status.count_exit({"phase": "Running"}, ended, None, "t", gang_restart(gang, ended).accounted)
        assert state["restarts"] == 1
        later = termination(second)
        assert status.count_exit(state, later, None, "t", gang_restart(gang, later).accounted) is None


def test_each_exit_counts_once_and_retries_stop_at_the_backoff_limit():
    first, again = termination(pod("j-worker-0", "Failed", 137)), termination(pod("j-worker-0", "Failed", 137))
    update = status.count_exit({"phase": "Running"}, first, backoff_limit=1, now="t")
    assert update["restarts"] == 1 and update["countedExits"] == ["uid-j-worker-0"] and "phase" not in update
    state = {"phase": "Restarting", **update}
    assert status.count_exit(state, again, backoff_limit=1, now="t") is None  # the same pod's event, re-delivered
    recreated = termination({**pod("j-worker-0", "Failed", 137), "metadata": {"name": "j-worker-0", "uid": "uid-2"}})
    over = status.count_exit(state, recreated, backoff_limit=1, now="t")
    assert over["restarts"] == 2 and over["phase"] == "Failed"
    assert "restart 2 exceeds spec.backoffLimit 1" in over["message"]
    assert status.count_exit(state, recreated, backoff_limit=None, now="t")["restarts"] == 2  # no limit: retry on


def test_a_permanent_exit_is_counted_without_a_restart():
    update = status.count_exit({"phase": "Running", "restarts": 3}, termination(pod("m", "Failed", 2)), 10, "t")
    assert "restarts" not in update and update["countedExits"] == ["uid-m"]
    exited = next(c for c in update["conditions"] if c["type"] == status.TRAINER_EXITED)
    assert exited["reason"] == status.PERMANENT_EXIT and "code 2 (permanent)" in exited["message"]


def test_a_deleted_pod_counts_as_a_restart_against_the_backoff_limit():
    update = status.count_exit({"phase": "Running"}, termination(pod("j-master-0", deleting=True)), 1, "t",
                               accounted=["uid-j-worker-0"])
    assert update["restarts"] == 1 and update["countedExits"] == ["uid-j-worker-0", "uid-j-master-0"]
    exited = next(c for c in update["conditions"] if c["type"] == status.TRAINER_EXITED)
    assert (exited["reason"], exited["message"]) == (status.POD_DELETED, "pod j-master-0 was deleted, retryable")
    state = {"phase": "Running", **update}
    over = status.count_exit(state, termination(pod("j-master-0", uid="new"), gone=True), 1, "t")
    assert over["phase"] == "Failed" and "restart 2 exceeds spec.backoffLimit 1" in over["message"]


@settings(deadline=None)  # up to 200 status updates: seconds on a loaded 2-core machine
@given(st.integers(min_value=0, max_value=200))
def test_counted_exits_stay_within_the_schema_limit(n):
    state: dict = {}
    for i in range(n):
        ended = termination({**pod("w", "Failed", 137), "metadata": {"name": "w", "uid": f"u{i}"}})
        state |= status.count_exit(state, ended, None, "t")
    assert len(state.get("countedExits", [])) == min(n, status.COUNTED_EXITS_KEPT)
    assert state.get("restarts", 0) == n


def test_the_job_mirror_updates_the_message_and_leaves_a_backoff_failure_alone():
    pending = status.mirror_job({}, "Pending", "JobCreated", "waiting for the training-operator", "t")
    gang = status.mirror_job(pending, "Pending", "GangIncomplete", "1 of 2 pods running", "t")
    assert gang["message"] == "1 of 2 pods running"  # same phase, newer news
    assert status.mirror_job({**pending, **gang}, "Pending", "GangIncomplete", "1 of 2 pods running", "t") is None
    failed = status.count_exit({"restarts": 1}, termination(pod("w", "Failed", 137)), 1, "t")
    assert status.mirror_job(failed, "Suspended", "JobSuspended", "", "t") is None


def test_unschedulable_pods_explain_why():
    assert "Insufficient nvidia.com/gpu" in unschedulable_message(pod("m", "Pending", scheduled=False))
    assert unschedulable_message(pod("m")) is None


def test_a_gang_is_placed_only_when_no_pod_waits_for_a_node():
    waiting = pod("j-worker-1", "Pending", scheduled=False)
    # The waiting rank's reason holds however many of its peers already run, in any order.
    for gang in ([pod("j-master-0"), waiting], [waiting, pod("j-master-0"), pod("j-worker-0")]):
        placed, message = gang_placement(gang)
        assert not placed and "Insufficient nvidia.com/gpu" in message
    assert gang_placement([pod("j-master-0"), pod("j-worker-0")]) == (True, "every pod of the job is placed")
    # A pod being deleted in a gang restart no longer blocks; a pod not yet considered decides nothing.
    assert gang_placement([pod("j-master-0"), pod("j-worker-1", "Pending", scheduled=False, deleting=True)])[0]
    fresh = {"metadata": {"name": "j-worker-0"}, "status": {"phase": "Pending"}}
    assert gang_placement([pod("j-master-0"), fresh]) is None
    assert gang_placement([]) is None


def test_conditions_in_the_same_second_resolve_to_the_later_stage():
    backend = PyTorchJobBackend()
    assert backend.job_state(job(("Created", "True", "5"), ("Running", "True", "5"))).phase == "Running"


def test_a_running_master_with_unplaced_workers_is_still_pending():
    backend = PyTorchJobBackend()
    state = backend.job_state(job(("Running", "True", "1"), replicas=3, active=2))
    assert (state.phase, state.message) == ("Pending", "2 of 3 pods running")
    assert backend.job_state(job(("Running", "True", "1"), replicas=3, active=3)).phase == "Running"


def test_the_message_explains_the_phase_most_specifically():
    job_says = status.set_condition([], status.READY, False, "JobFailed", "job failed", "t")
    exited = status.set_condition(job_says, status.TRAINER_EXITED, True, "PermanentExit", "pod m exited with code 2", "t")
    unplaced = status.set_condition(job_says, status.SCHEDULED, False, "Unschedulable", "Insufficient nvidia.com/gpu", "t")
    assert status.explain("Failed", exited) == "pod m exited with code 2"
    assert status.explain("Running", exited) == "job failed"
    assert status.explain("Pending", unplaced) == "Insufficient nvidia.com/gpu"
    assert status.explain("Pending", job_says) == "job failed"
    assert status.explain("Pending", []) == ""
    recovered = status.set_condition(job_says, status.TRAINER_EXITED, True, "RetryableExit", "pod m exited with code 137", "t")
    assert status.explain("Restarting", recovered) == "pod m exited with code 137"
    assert status.explain("Failed", recovered) == "job failed"  # an old retryable exit explains no later failure
    deleted = status.set_condition(job_says, status.TRAINER_EXITED, True, status.POD_DELETED, "pod m was deleted", "t")
    assert status.explain("Failed", deleted) == "job failed"


def by_type(update: dict) -> dict[str, dict]:
    return {c["type"]: c for c in update["conditions"]}


def test_the_job_mirror_keeps_the_conventional_conditions():
    observed = {"observedGeneration": 3}
    pending = status.mirror_job(observed, "Pending", "GangIncomplete", "1 of 2 pods running", "t")
    assert by_type(pending)[status.READY] == {"type": "Ready", "status": "False", "reason": "GangIncomplete",
                                              "message": "1 of 2 pods running", "lastTransitionTime": "t",
                                              "observedGeneration": 3}
    running = status.mirror_job({**observed, **pending}, "Running", "PyTorchJobRunning", "job runs", "t2")
    assert by_type(running)[status.READY]["status"] == "True" and status.COMPLETE not in by_type(running)
    done = by_type(status.mirror_job({**observed, **running}, "Succeeded", "PyTorchJobSucceeded", "done", "t3"))
    assert done[status.READY]["status"] == "True" and done[status.COMPLETE]["status"] == "True"
    assert not {status.FAILED, status.STALLED, status.SUSPENDED} & set(done)  # batch/v1: present once true


def test_a_failed_run_is_failed_and_stalled_with_the_trainers_reason():
    exited = status.count_exit({"phase": "Running", "observedGeneration": 2}, termination(pod("m", "Failed", 2)), 3, "t")
    failed = by_type(status.mirror_job({"observedGeneration": 2, **exited}, "Failed", "PyTorchJobFailed", "job failed", "t"))
    for type_ in (status.FAILED, status.STALLED):
        assert (failed[type_]["status"], failed[type_]["reason"]) == ("True", status.PERMANENT_EXIT)
        assert "exited with code 2 (permanent)" in failed[type_]["message"]
    assert failed[status.READY]["status"] == "False"
    over = status.count_exit({"phase": "Restarting", "restarts": 1}, termination(pod("m", "Failed", 137)), 1, "t")
    assert (by_type(over)[status.FAILED]["reason"], by_type(over)[status.STALLED]["status"]) == (status.BACKOFF_EXCEEDED, "True")


def test_suspended_comes_and_goes_with_the_job():
    suspended = status.mirror_job({"phase": "Running"}, "Suspended", "PyTorchJobSuspended", "suspended", "t1")
    assert by_type(suspended)[status.SUSPENDED]["status"] == "True" and by_type(suspended)[status.READY]["status"] == "True"
    resumed = by_type(status.mirror_job(suspended, "Pending", "PyTorchJobResumed", "resumed", "t2"))
    assert (resumed[status.SUSPENDED]["status"], resumed[status.SUSPENDED]["reason"]) == ("False", "Resumed")
    assert resumed[status.READY]["status"] == "False"


def test_a_refused_run_fails_and_a_replanned_one_is_pending_again():
    refused = status.failed({}, "PlanRefused", "needs 90 GiB of 24", "t1", generation=1)
    assert refused["phase"] == "Failed" and refused["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in refused["conditions"]} == {
        status.PLAN_FITS: "False", status.FAILED: "True", status.STALLED: "True", status.READY: "False"}
    again = {c["type"]: c for c in status.pending(refused["conditions"], "t2", generation=2)}
    assert again[status.FAILED]["status"] == again[status.STALLED]["status"] == again[status.READY]["status"] == "False"
    assert all(c["observedGeneration"] == 2 for t, c in again.items() if t != status.PLAN_FITS)


@given(st.lists(st.sampled_from(["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]),
                min_size=1, max_size=8))
def test_conditions_agree_with_the_phase_whatever_came_before(phases):
    state: dict = {"observedGeneration": 1}
    for i, phase in enumerate(phases):
        state |= status.mirror_job(state, phase, f"Job{phase}", phase.lower(), str(i)) or {}
    held = {c["type"]: c["status"] == "True" for c in state["conditions"]}
    phase = phases[-1]
    assert held[status.READY] == (phase in status.READY_PHASES)
    assert held.get(status.COMPLETE, False) == (phase == "Succeeded")
    assert held.get(status.FAILED, False) == held.get(status.STALLED, False) == (phase == "Failed")
    assert held.get(status.SUSPENDED, False) == (phase == "Suspended")
    assert all(c["observedGeneration"] == 1 for c in state["conditions"])
