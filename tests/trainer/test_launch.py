"""helixrun-launch, the pod's command: the container's exit code is the one our restart contract reads.

Each case runs the real command a pod runs (`helixrun-launch --config FILE`), with the stand-in trainer
(standin_train.py, first on PATH as `helixrun-train`) or the real one as its child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.trainer.harness import Trainer, start_trainer

from helixrun_trainer.cli import resolve_local
from helixrun_trainer.launch import Placement, PlacementError, placement_from_env

VENV_BIN = Path(sys.executable).parent
LAUNCH = str(VENV_BIN / "helixrun-launch")
STANDIN = Path(__file__).with_name("standin_train.py")


def standin_path(tmp_path: Path) -> str:
    """A PATH whose `helixrun-train` is the stand-in."""
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "helixrun-train"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def launch_standins(tmp_path: Path, **env: str) -> Trainer:
    return start_trainer([LAUNCH, "--config", "/etc/helixrun/config.yaml", "--metrics-port", "0"], tmp_path,
                         log_name="launch.log", PATH=standin_path(tmp_path), STANDIN_DIR=str(tmp_path), **env)


def record(t: Trainer, rank: int) -> dict:
    path = t.workdir / f"rank-{rank}.json"
    t.wait_for_file(path)
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("code", [0, 2, 3, 129, 143])
def test_the_launcher_exits_with_its_childs_code(tmp_path, code):
    t = launch_standins(tmp_path, STANDIN_ALL=f"exit {code}")
    assert t.wait() == code, t.log
    child = record(t, 0)
    assert child["argv"] == ["--config", "/etc/helixrun/config.yaml", "--metrics-port", "0"]
    assert child["env"] | {"OMP_NUM_THREADS": None} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "OMP_NUM_THREADS": None}


def test_a_sigkilled_child_reads_as_137_not_as_a_permanent_failure(tmp_path):
    t = launch_standins(tmp_path, STANDIN_ALL="sleep")
    os.kill(record(t, 0)["pid"], signal.SIGKILL)  # the child, as `kill -9 $(pgrep -f helixrun-train)` in the pod
    assert t.wait() == 128 + signal.SIGKILL, t.log
    assert "rank 0 (local rank 0) failed: exit 137" in t.log


@pytest.mark.parametrize("peer", ["sleep", "stubborn"])
def test_when_one_local_rank_fails_its_peers_are_stopped_and_its_code_is_the_pods(tmp_path, peer):
    # A PyTorchJob's second pod (RANK=1) with two GPUs: global ranks 2 and 3. Rank 3 fails once rank 2 is up;
    # rank 2 then exits 143 (sleep) or is SIGKILLed (stubborn): neither code may hide rank 3's permanent 3.
    t = launch_standins(tmp_path, PET_NNODES="2", PET_NPROC_PER_NODE="2", RANK="1", MASTER_ADDR="job-master-0",
                        MASTER_PORT="23456", HELIXRUN_LAUNCH_STOP_SECONDS="1", STANDIN_RANK2=peer,
                        STANDIN_RANK3="exit 3 after rank-2.json")
    survivor = record(t, 2)
    assert t.wait() == 3, t.log
    assert survivor["env"] | {"OMP_NUM_THREADS": None} == {
        "RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "OMP_NUM_THREADS": None}
    assert record(t, 3)["env"]["LOCAL_RANK"] == "1"
    assert not alive(survivor["pid"]), "the surviving rank was left running"
    assert "rank 3 (local rank 1) failed: exit 3" in t.log and "stopping 1 other local rank(s)" in t.log
    if peer == "stubborn":
        assert "still running 1 s after SIGTERM: SIGKILL" in t.log


def test_a_killed_rank_keeps_the_pod_retryable_while_its_peer_exits_143(tmp_path):
    t = launch_standins(tmp_path, PET_NPROC_PER_NODE="2", STANDIN_ALL="sleep")
    peer = record(t, 0)
    os.kill(record(t, 1)["pid"], signal.SIGKILL)
    assert t.wait() == 137, t.log
    assert not alive(peer["pid"])


def test_sigterm_is_forwarded_and_the_launcher_waits_for_the_children(tmp_path):
    t = launch_standins(tmp_path, PET_NPROC_PER_NODE="2", STANDIN_ALL="sleep")
    pids = [record(t, r)["pid"] for r in (0, 1)]
    os.kill(t.proc.pid, signal.SIGTERM)  # the launcher only, as the kubelet signals PID 1
    assert t.wait() == 143, t.log
    assert not any(map(alive, pids))


def test_bad_placement_env_is_a_permanent_error_naming_the_variable(tmp_path):
    t = launch_standins(tmp_path, PET_NNODES="1:4")
    assert t.wait() == 2
    assert "PET_NNODES='1:4': elastic node counts (min:max) are not supported" in t.log
    assert not (tmp_path / "rank-0.json").exists(), "no child starts"


def test_a_missing_trainer_is_a_permanent_error(tmp_path):
    t = start_trainer([LAUNCH, "--config", "x.yaml"], tmp_path, log_name="launch.log", PATH=str(tmp_path))
    assert t.wait() == 2
    assert "cannot start helixrun-train" in t.log


@pytest.mark.parametrize(("env", "expected"), [
    ({}, Placement()),
    # PyTorchJob: RANK is the pod index, PET_NODE_RANK absent; MASTER_* and PET_MASTER_* both set.
    ({"PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "RANK": "2", "WORLD_SIZE": "6", "MASTER_ADDR": "j-master-0",
      "MASTER_PORT": "23456", "PET_MASTER_ADDR": "j-master-0", "PET_MASTER_PORT": "23456"},
     Placement(nnodes=3, nproc=2, node_rank=2, master_addr="j-master-0", master_port=23456)),
    # Trainer v2 (TrainJob): PET_* only.
    ({"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "t-node-0-0.t",
      "PET_MASTER_PORT": "29400"}, Placement(nnodes=2, node_rank=1, master_addr="t-node-0-0.t", master_port=29400)),
    ({"PET_NPROC_PER_NODE": "cpu"}, Placement()),
])
def test_placement_from_the_operators_env(env, expected):
    assert placement_from_env(env) == expected


@pytest.mark.parametrize(("env", "says"), [
    ({"PET_NNODES": "2", "PET_NODE_RANK": "2"}, "node rank 2 is not below PET_NNODES=2"),
    ({"PET_NPROC_PER_NODE": "0"}, "PET_NPROC_PER_NODE='0': must be at least 1"),
    ({"PET_NPROC_PER_NODE": "many"}, "PET_NPROC_PER_NODE='many': expected an integer"),
    ({"PET_MASTER_PORT": "http"}, "PET_MASTER_PORT='http': expected an integer"),
])
def test_placement_refusals_name_the_variable(env, says):
    with pytest.raises(PlacementError, match=re.escape(says)):
        placement_from_env(env)


def test_ranks_on_a_node_follow_torchrun():
    placement = Placement(nnodes=2, nproc=4, node_rank=1)
    env = placement.child_env(3, {"OMP_NUM_THREADS": "8"})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("7", "3", "8", "4")
    assert env["OMP_NUM_THREADS"] == "8", "a user's thread count stays"
    assert Placement().child_env(0, {}).get("OMP_NUM_THREADS") is None, "one rank per node keeps torch's default"


def test_the_real_trainer_saves_on_sigterm_to_the_launcher_and_the_pod_exits_143(run_file, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(resolve_local(yaml.safe_load(run_file.read_text()), tmp_path, tiny=True).to_yaml())
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    t = start_trainer([LAUNCH, "--config", str(config), "--metrics-port", "0"], tmp_path, pause="3:after-step",
                      log_name="launch.log", PATH=path)
    t.wait_paused(3, "after-step")
    trainer_pid = int((tmp_path / "checkpoints" / "PAUSED-3-after-step-r0").read_text())
    # What the cluster tests look for: exactly the training process, never the launcher (PID 1 in a pod).
    found = subprocess.run(["pgrep", "-f", "-s", str(t.proc.pid), "helixrun-train"], capture_output=True, text=True)
    assert [int(p) for p in found.stdout.split()] == [trainer_pid]
    started = time.monotonic()
    os.kill(t.proc.pid, signal.SIGTERM)
    assert t.wait() == 143, t.log[-3000:]
    assert (tmp_path / "checkpoints" / "step-00000003" / "COMPLETE").exists(), "the step in flight was not saved"
    assert "preempted: checkpoint at step 3 committed, exiting 143" in t.log
    assert time.monotonic() - started < 60
