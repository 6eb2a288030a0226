"""A smoke run trained the way its pods train it: the operator's resolved config, one `helixrun-launch` per
pod with the env a 2-pod PyTorchJob gives, no CLI flag saying "tiny". Kill a rank mid-run, restart the gang:
the final weights are the uninterrupted run's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.controlplane import free_ports
from tests.trainer.harness import REPO, start_trainer

from helixrun import api
from helixrun.pools import default_pools
from helixrun.recipes import RECIPES
from helixrun.render import RenderSettings, render_run
from helixrun.resolve import ResolvedRun, local_paths, resolve

VENV_BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "run-esm2.yaml"
STEPS = 40  # a shorter smoke test than the 200-step cap, with its checkpoints every 20: kill at 30, resume from 20


def pod_config(workdir: Path) -> Path:
    """The config.yaml of the run's ConfigMap, as the operator renders it; here the workdir is the volumes."""
    obj = yaml.safe_load(EXAMPLE.read_text())  # the ESM-2 example made a 2-node x 1-GPU smoke run
    obj["spec"].update(smokeTest=True, hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 1})
    obj["spec"]["training"].pop("epochs", None)
    obj["spec"]["training"]["maxSteps"] = STEPS
    objects = render_run(resolve(api.TrainingRun.from_object(obj), default_pools()), RenderSettings())
    config = ResolvedRun.from_yaml(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert config.smoke_test and config.paths.data == "/tmp/smoke-data"
    path = workdir / "config.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(config.model_copy(update={"paths": local_paths(workdir)}).to_yaml())
    return path


class Pods:
    """The job's two pods: master (RANK 0) and worker (RANK 1), each running the pod's command."""

    def __init__(self, workdir: Path, pause: str | None = None):
        config = pod_config(workdir)
        (port,) = map(str, free_ports(1))
        placement = dict(PET_NNODES="2", PET_NPROC_PER_NODE="1", WORLD_SIZE="2", PET_MASTER_ADDR="127.0.0.1",
                         PET_MASTER_PORT=port, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                         PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
        self.pods = [
            start_trainer([str(VENV_BIN / "helixrun-launch"), "--config", str(config), "--metrics-port", "0"],
                          workdir, pause=pause, log_name=f"pod{r}.log", RANK=str(r), **placement)
            for r in range(2)
        ]

    def wait(self) -> list[int]:
        return [p.wait() for p in self.pods]

    @property
    def log(self) -> str:
        return "".join(p.log for p in self.pods)


def final_sha(pods: Pods) -> str:
    digests = re.findall(r"weights sha256=([0-9a-f]{64})", pods.log)
    assert len(digests) == 1, f"the final weights' digest should be logged once, by rank 0: {digests}"
    assert re.search(r"rank=0 INFO \S+: weights sha256=[0-9a-f]{64} agree across 2 rank\(s\)", pods.pods[0].log)
    return digests[0]


@pytest.mark.slow
def test_a_smoke_run_in_two_pods_finishes_and_resumes_exactly_after_a_rank_is_killed(tmp_path):
    reference = Pods(tmp_path / "uninterrupted")
    assert reference.wait() == [0, 0], reference.log[-4000:]
    sha = final_sha(reference)
    config = yaml.safe_load((tmp_path / "uninterrupted" / "config.yaml").read_text())
    assert (config["plan"]["world_size"], config["plan"]["distributed"]) == (2, "ddp")

    # The worker's training process dies mid-run (as `kubectl exec ... kill -9 $(pgrep -f helixrun-train)`).
    workdir = tmp_path / "killed"
    pods = Pods(workdir, pause="30:after-step@1")
    pods.pods[1].wait_paused(30, "after-step", rank=1)
    os.kill(int((workdir / "checkpoints" / "PAUSED-30-after-step-r1").read_text()), signal.SIGKILL)
    master, worker = pods.wait()
    assert worker == 137, pods.pods[1].log[-3000:]
    assert master >= 128, f"the master lost its peer: retryable, not {master}\n{pods.pods[0].log[-3000:]}"

    # The gang restarts (the operator deletes the surviving pod; the training-operator recreates both).
    pods = Pods(workdir)
    assert pods.wait() == [0, 0], pods.log[-4000:]
    assert "resumed from" in pods.log and "(step 20)" in pods.log
    assert final_sha(pods) == sha


@pytest.mark.slow
def test_generated_data_is_the_same_bytes_in_every_pod(tmp_path):
    """Each pod generates its smoke data in its own /tmp: separate processes (separate hash seeds) must agree."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from helixrun_trainer.cli import resolve_local\n"
        "from helixrun_trainer.recipes import get_recipe\n"
        "for recipe in sys.argv[2:]:\n"
        "    run = {'apiVersion': 'helixrun.io/v1alpha1', 'kind': 'TrainingRun', 'metadata': {'name': 's'},\n"
        "           'spec': {'recipe': recipe, 'hardware': {'pool': 'a800'}, 'training': {'maxSteps': 9}}}\n"
        "    cfg = resolve_local(run, Path(sys.argv[1]) / recipe, tiny=True)\n"
        "    get_recipe(recipe).__class__().build_data(cfg, True, Path(cfg.paths.data))\n"
    )
    for pod, hash_seed in (("pod0", "1"), ("pod1", "2")):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / pod), *RECIPES], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}, timeout=600)

    def files(pod: str) -> dict[str, bytes]:
        root = tmp_path / pod
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = files("pod0"), files("pod1")
    assert first.keys() == second.keys() and first, sorted(first)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"generated data differs between pods: {differing}"
    assert any(name.endswith("tiny-esm2.fasta") for name in first), json.dumps(sorted(first))
