"""`helixrun plan`: one pool, every pool, json/yaml/table, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from helixrun.cli import main

RUNS = Path(__file__).parent / "runs"


def test_plan_json_for_the_runs_pool(capsys):
    assert main(["plan", "-f", str(RUNS / "esm2-650m-rtx2080super.yaml"), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    plan = out["esm2-650m"]["rtx2080super"]
    assert plan["fits"] and plan["precision"] == "fp16" and plan["offload"]
    assert plan["memory"]["total"] < plan["pool_memory_gib"]
    assert re.fullmatch(r"\d+d\d\dh", plan["eta"]), f"a run of days prints days and hours: {plan['eta']}"


def test_refused_plan_exits_3_and_prints_the_ways_out(capsys):
    assert main(["plan", "-f", str(RUNS / "metagene-full-rtx4090.yaml")]) == 3
    out = capsys.readouterr().out
    assert "refused" in out and "method lora" in out and "spec.hardware.memoryPerGPU" in out


def test_all_pools_table_lists_every_pool(capsys):
    assert main(["plan", "-f", str(RUNS / "metagene-lora-rtx4090.yaml"), "--all-pools"]) == 0
    out = capsys.readouterr().out
    for pool in ("a800", "a100-80", "h100", "rtx4090", "rtx3080", "rtx2080super"):
        assert pool in out
    assert "2×16×1 = 32 samples" in out


def test_all_pools_clamps_gpus_per_node_and_says_so(tmp_path, capsys):
    run = yaml.safe_load((RUNS / "esm2-650m-rtx2080super.yaml").read_text())
    run["spec"]["hardware"]["gpusPerNode"] = 2
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert main(["plan", "-f", str(path), "--all-pools", "-o", "yaml"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)["esm2-650m"]
    assert out["rtx3080"]["world_size"] == 1
    assert any("clamped" in n for n in out["rtx3080"]["notes"])
    assert out["rtx2080super"]["world_size"] == 2 and not any("clamped" in n for n in out["rtx2080super"]["notes"])


def test_unknown_pool_is_an_error(tmp_path, capsys):
    run = yaml.safe_load((RUNS / "genechat-a800.yaml").read_text())
    run["spec"]["hardware"]["pool"] = "tpu"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert main(["plan", "-f", str(path)]) == 2
    assert "unknown pool 'tpu'" in capsys.readouterr().err


def test_set_overrides_reach_the_plan_as_the_file_would(tmp_path, capsys):
    assert main(["plan", "-f", str(RUNS / "esm2-650m-rtx2080super.yaml"), "-o", "json",
                 "--set", "hardware.pool=a800", "--set", "hardware.gpusPerNode=4"]) == 0
    overridden = json.loads(capsys.readouterr().out)["esm2-650m"]
    run = yaml.safe_load((RUNS / "esm2-650m-rtx2080super.yaml").read_text())
    run["spec"]["hardware"] |= {"pool": "a800", "gpusPerNode": 4}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert main(["plan", "-f", str(path), "-o", "json"]) == 0
    assert overridden == json.loads(capsys.readouterr().out)["esm2-650m"] and overridden["a800"]["world_size"] == 4


def test_a_bad_set_override_is_an_error_naming_it(capsys):
    assert main(["plan", "-f", str(RUNS / "genechat-a800.yaml"), "--set", "hardware..pool=x"]) == 2
    assert "--set hardware..pool" in capsys.readouterr().err
