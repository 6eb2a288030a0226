"""helixrun-train's command line: --tiny defaults, --set end to end, exit codes for refused runs."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from tests.trainer.harness import start_trainer, train_command

from helixrun_trainer import cli
from helixrun_trainer.errors import EXIT_CONFIG, EXIT_PEER_LOST, EXIT_PLAN, EXIT_UNEXPECTED, exit_code_for


def local_args(run_file, workdir, *sets, tiny=True):
    return argparse.Namespace(file=run_file, workdir=workdir, tiny=tiny, set=list(sets), pools=None)


def test_tiny_defaults_apply_and_set_wins(run_file, tmp_path):
    cfg = cli.local_config(local_args(run_file, tmp_path, "training.maxSteps=7", "metrics.port=9555"))
    spec = cfg.typed_spec
    assert spec.training.max_steps == 7  # --set beats --tiny's 40
    assert spec.checkpointing.every_steps == 5 and spec.evaluation.every_steps == 10  # --tiny's
    assert spec.metrics.port == 9555
    assert (spec.hardware.nodes, spec.hardware.gpus_per_node) == (1, 1)
    assert spec.data.max_sequence_length == 64
    assert spec.training.global_batch.tokens == 256
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["spec"]["training"]["maxSteps"] == 7 and written["kind"] == "ResolvedRun"


def test_without_tiny_the_example_is_untouched(run_file, tmp_path):
    cfg = cli.local_config(local_args(run_file, tmp_path, tiny=False))
    assert cfg.typed_spec.training.max_steps == yaml.safe_load(run_file.read_text())["spec"]["training"]["maxSteps"]


@pytest.mark.parametrize("assignment, field", [
    ("training.optimizer.name=sgd", "spec.training.optimizer.name"),
    ("hardware.pool=nope", "spec.hardware.pool"),
    ("checkpointing.keepLast=0", "spec.checkpointing.keepLast"),
    ("no-equals-sign", "--set"),
])
def test_invalid_set_exits_2_naming_the_field(run_file, tmp_path, capsys, assignment, field):
    code = cli.main(["--local", "-f", str(run_file), "--workdir", str(tmp_path), "--tiny", "--set", assignment])
    assert code == EXIT_CONFIG
    assert field in capsys.readouterr().err


def test_a_recipe_command_needs_a_known_recipe(capsys):
    assert cli.main(["predict", "nosuch"]) == EXIT_CONFIG
    assert "usage: helixrun-train predict {esm2-mlm,genechat," in capsys.readouterr().err


@pytest.mark.parametrize(("command", "recipe", "says"), [
    ("predict", "genechat", "--fasta"), ("predict", "metagene-classification", "--output"),
    ("sample", "structdiff", "--num"), ("prepare", "genechat", "--gene-info"), ("precompute", "ptm-mamba", "--workdir"),
])
def test_recipe_commands_are_reachable_from_helixrun_train(capsys, command, recipe, says):
    with pytest.raises(SystemExit) as done:
        cli.main([command, recipe, "--help"])
    assert done.value.code == 0 and says in capsys.readouterr().out


def test_exit_code_classification():
    import torch

    assert exit_code_for(torch.OutOfMemoryError("CUDA out of memory")) == EXIT_PLAN
    assert exit_code_for(RuntimeError("[Gloo] Connection closed by peer [10.0.0.3]:4021")) == EXIT_PEER_LOST
    assert exit_code_for(KeyError("bug")) == EXIT_UNEXPECTED


@pytest.mark.slow
def test_set_end_to_end_and_missing_data_exits_2(run_file, tmp_path):
    run = tmp_path / "run"
    t = start_trainer(train_command(run_file, run, "training.maxSteps=7", "checkpointing.everySteps=3",
                                    "checkpointing.keepLast=5"), run)
    assert t.wait() == 0, t.log[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "records" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == \
        ["step-00000003", "step-00000006", "step-00000007"]
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    assert (run / "records" / "split_mapping.json").is_file() and (run / "records" / "config.yaml").is_file()
    assert list((run / "records" / "tensorboard").iterdir()), "no TensorBoard events"

    missing = tmp_path / "missing"
    t = start_trainer(train_command(run_file, missing, f"data.path={tmp_path}/absent.fasta", tiny=False), missing)
    assert t.wait() == EXIT_CONFIG, t.log[-3000:]
    assert "absent.fasta" in t.log
