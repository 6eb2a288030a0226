"""Two CPU ranks (gloo, one process per pod as a PyTorchJob launches them): ranks agree, a checkpoint
commits only after both ranks' parts, and a 2-rank kill/resume is bitwise exact."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.controlplane import free_ports
from tests.trainer.harness import assert_bitwise_equal, final_weights, losses, start_trainer, train_command

from helixrun_trainer import cli
from helixrun_trainer.distributed import read_env


class Ranks:
    """Two trainer processes with the environment a 2-pod PyTorchJob gives (one process per pod)."""

    def __init__(self, run_file, workdir, pause: str | None = None, cmd: list[str] | None = None, **env: str):
        cmd = cmd or train_command(run_file, workdir, "hardware.gpusPerNode=2")
        (port,) = map(str, free_ports(1))
        self.procs = [
            start_trainer(cmd, workdir, pause=pause, log_name=f"rank{r}.log", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=port, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK="0", **env)
            for r in range(2)
        ]

    @property
    def log(self) -> str:
        return "".join(p.log for p in self.procs)

    def wait(self) -> list[int]:
        return [p.wait() for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def digests(log: str) -> dict[int, str]:
    return {int(r): d for r, d in re.findall(r"rank=(\d) INFO \S+: weights sha256=([0-9a-f]{64}) agree", log)}


def test_environment_of_a_pytorchjob_pod_and_of_torchrun():
    env = read_env({"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "4", "RANK": "2"}, cuda=False)
    assert (env.rank, env.world_size, env.local_rank, env.backend) == (2, 4, 0, "gloo")
    env = read_env({"PET_WORLD_SIZE": "2", "PET_RANK": "1", "LOCAL_RANK": "1"}, cuda=False)
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    assert read_env({}, cuda=False).backend is None


@pytest.mark.slow
def test_two_ranks_agree_and_commit_only_after_both_parts(run_file, tmp_path):
    reference = tmp_path / "uninterrupted"
    # The uninterrupted run saves asynchronously, the interrupted one synchronously: same checkpoints, same run.
    t = Ranks(run_file, reference, HELIXRUN_ASYNC_CHECKPOINT="1")
    assert t.wait() == [0, 0], t.log[-4000:]
    agreed = digests(t.log)
    assert set(agreed) == {0} and "agree across 2 rank(s)" in t.procs[0].log, f"rank weight digests: {agreed}"
    plan = yaml.safe_load((reference / "config.yaml").read_text())["plan"]
    assert (plan["world_size"], plan["distributed"]) == (2, "ddp")

    # Rank 1 stalls before marking its part of step 15 done: rank 0 has written its part, nothing is committed.
    resumed = tmp_path / "resumed"
    t = Ranks(run_file, resumed, pause="15:parts@1")
    t.procs[1].wait_paused(15, "parts", rank=1)
    staging = resumed / "checkpoints" / "step-00000015.tmp"
    assert (staging / "rank-00001.pt").exists() and not (staging / "rank-00001.done").exists()
    assert not (resumed / "checkpoints" / "step-00000015").exists(), "committed before rank 1 finished"
    t.kill()
    assert not (resumed / "checkpoints" / "step-00000015").exists()

    t = Ranks(run_file, resumed)
    assert t.wait() == [0, 0], t.log[-4000:]
    assert "(step 10)" in t.log, "should resume from step 10, the last checkpoint both ranks committed"
    assert set(digests(t.log)) == {0}, "rank 0 logs the digest once, after the ranks agreed"
    assert losses(resumed) == losses(reference)
    assert_bitwise_equal(final_weights(reference), final_weights(resumed), "2-rank final weights after resume")


@pytest.mark.slow
@pytest.mark.parametrize("async_save", ["0", "1"])
def test_a_failed_checkpoint_writer_fails_every_rank_as_permanent(run_file, tmp_path, async_save):
    # Rank 1's disk "fails" writing step 10. Rank 0 must not read that as a lost peer (129, retried into
    # the same failure): both ranks stop with the failure's code, and nothing half-written is committed.
    t = Ranks(run_file, tmp_path, HELIXRUN_TEST_FAIL="10:parts@1", HELIXRUN_ASYNC_CHECKPOINT=async_save)
    assert t.wait() == [1, 1], t.log[-4000:]
    assert "another rank failed writing checkpoint step 10" in t.procs[0].log
    assert "injected failure at step 10 (parts) on rank 1" in t.procs[1].log
    committed = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    assert committed == ["step-00000005"]


def fsdp_config(run_file, workdir, gpus: int = 2, **plan) -> Path:
    """A pod-mode config whose plan shards (the planner picks FSDP or ZeRO only for models that need it)."""
    args = argparse.Namespace(file=run_file, workdir=workdir, tiny=True, pools=None,
                              set=[f"hardware.gpusPerNode={gpus}", "training.maxSteps=12"])
    cfg = cli.local_config(args)
    cfg = cfg.model_copy(update={"plan": cfg.plan.model_copy(update=plan or {"distributed": "fsdp"})})
    path = workdir / "fsdp-config.yaml"
    path.write_text(cfg.to_yaml())
    return path


def pod_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "helixrun_trainer.cli", "--config", str(config), "--metrics-port", "0"]


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_resume_exactly_in_pod_mode(run_file, tmp_path):
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    t = Ranks(run_file, reference, cmd=pod_command(fsdp_config(run_file, reference)))
    assert t.wait() == [0, 0], t.log[-4000:]
    shards = sorted(p.name for p in (reference / "checkpoints" / "step-00000010" / "dcp").iterdir())
    assert ".metadata" in shards and len([n for n in shards if n.endswith(".distcp")]) == 2, shards
    manifest = (reference / "checkpoints" / "step-00000010" / "manifest.json").read_text()
    assert "dcp/__1_0.distcp" in manifest, "rank 1's shard is not in the manifest"

    config = fsdp_config(run_file, resumed)
    t = Ranks(run_file, resumed, pause="8:after-step", cmd=pod_command(config))
    t.procs[0].wait_paused(8, "after-step")
    t.kill()
    t = Ranks(run_file, resumed, cmd=pod_command(config))
    assert t.wait() == [0, 0], t.log[-4000:]
    assert "(step 5)" in t.log
    assert losses(resumed) == losses(reference)
    assert_bitwise_equal(final_weights(reference), final_weights(resumed), "FSDP final weights after resume")


@pytest.mark.slow
def test_zero2_offload_plan_runs_sharded_on_one_rank(run_file, tmp_path):
    """A single-GPU ZeRO-2 + offload plan (what the planner gives small cards) trains on FSDP2 with a
    one-rank process group; its checkpoints are DCP shards and final/ is a full Hugging Face export."""
    config = fsdp_config(run_file, tmp_path, gpus=1, distributed="deepspeed", zero_stage=2, offload=True)
    t = start_trainer(pod_command(config), tmp_path)
    assert t.wait() == 0, t.log[-4000:]
    assert "ZeRO-2 with CPU offload plan: running it on FSDP2" in t.log
    assert (tmp_path / "checkpoints" / "step-00000010" / "dcp" / ".metadata").is_file()
    assert set(final_weights(tmp_path)) >= {"esm.embeddings.word_embeddings.weight", "lm_head.dense.weight"}
