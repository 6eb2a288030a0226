"""Status computation and pod reading: the operator's pure decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from helixrun import status
from helixrun.backends.pytorchjob import PyTorchJobBackend
from helixrun.controller.pods import gang_placement, peers_to_restart, termination, unschedulable_message


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


def pod(name, phase="Running", code=None, scheduled=True, deleting=False):
    body = {"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": {"nodeName": "a800-0"} if scheduled else {}, "status": {"phase": phase}}
    if code is not None:
        body["status"]["containerStatuses"] = [{"name": "pytorch", "state": {"terminated": {"exitCode": code, "reason": "Error", "message": "NCCL timeout"}}}]
    if not scheduled:
        body["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "message": "0/6 nodes: Insufficient nvidia.com/gpu"}]
    if deleting:
        body["metadata"]["deletionTimestamp"] = "now"
    return body


def test_exit_codes_follow_the_contract():
    assert termination(pod("m", "Running")) is None
    assert termination(pod("m", "Failed", 143)).retryable
    assert not termination(pod("m", "Failed", 2)).retryable
    assert "code 2 (permanent): NCCL timeout" in termination(pod("m", "Failed", 2)).describe()


def test_a_failed_rank_restarts_its_live_peers_only():
    pods = [pod("j-master-0"), pod("j-worker-0", "Failed", 137), pod("j-worker-1"), pod("j-worker-2", deleting=True),
            pod("j-worker-3", "Failed", 1)]  # its permanent exit must fail the run, not vanish in a restart
    assert peers_to_restart(pods, "j-worker-0") == ["j-master-0", "j-worker-1"]


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
