"""Every alert rule, with the chart's default windows, against synthetic series (`promtool test rules`).

The live test (test_prometheus.py) fires the stall and NaN alerts from real
trainers; this one covers each rule's branches deterministically, the DCGM join
included, and that healthy or finished runs stay quiet.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from helixrun.telemetry import alerts

from tests.debian import require


R = 'namespace="ns",run="r"'
RANK = R + ',rank="0"'


def alert(name: str, eval_time: str, *expected: dict) -> dict:
    return {"eval_time": eval_time, "alertname": name,
            "exp_alerts": [{"exp_labels": {**labels, "severity": _severity(name)}} for labels in expected]}


def _severity(name: str) -> str:
    return next(a.severity for a in alerts.ALERTS if a.name == name)


RUN_LABELS = {"namespace": "ns", "run": "r"}

CASES = {
    "stalled: the step stops changing while the exporter answers": (
        [(f"helixrun_train_step{{{RANK}}}", "0+1x10 10x40"),
         (f"helixrun_train_total_steps{{{RANK}}}", "100x50"),
         (f'up{{{R},job="trainers"}}', "1x50")],
        [alert("HelixrunTrainingStalled", "12m"),
         alert("HelixrunTrainingStalled", "40m", RUN_LABELS)],
    ),
    "stalled: the trainer stops answering scrapes": (
        [(f"helixrun_train_step{{{RANK}}}", "0+1x10 stale"),
         (f"helixrun_train_total_steps{{{RANK}}}", "100x10 stale"),
         (f'up{{{R},job="trainers"}}', "1x10 0x20")],
        [alert("HelixrunTrainingStalled", "12m"),
         alert("HelixrunTrainingStalled", "20m", RUN_LABELS)],
    ),
    "not stalled: a finished run rests at its last step": (
        [(f"helixrun_train_step{{{RANK}}}", "0+10x10 100x40"),
         (f"helixrun_train_total_steps{{{RANK}}}", "100x50"),
         (f'up{{{R},job="trainers"}}', "1x50")],
        [alert("HelixrunTrainingStalled", "45m")],
    ),
    "loss NaN, still reported after the trainer exits": (
        [(f"helixrun_train_loss{{{RANK}}}", "3 2.5 NaN NaN NaN stale")],
        [alert("HelixrunLossNaN", "1m"),
         alert("HelixrunLossNaN", "4m", {**RUN_LABELS, "rank": "0"}),
         alert("HelixrunLossNaN", "8m", {**RUN_LABELS, "rank": "0"})],
    ),
    "loss infinite": (
        [(f"helixrun_train_loss{{{RANK}}}", "3 Inf Inf Inf")],
        [alert("HelixrunLossNaN", "3m", {**RUN_LABELS, "rank": "0"})],
    ),
    "loss diverging": (
        [(f"helixrun_train_loss{{{RANK}}}", "2x60 5x30")],
        [alert("HelixrunLossDiverging", "60m"),
         alert("HelixrunLossDiverging", "85m", RUN_LABELS)],
    ),
    "checkpoint overdue while steps remain": (
        # the last checkpoint completed at unix time 60 s; 3 x 1800 s later it is overdue
        [(f"helixrun_checkpoint_last_timestamp_seconds{{{RANK}}}", "60x150"),
         (f"helixrun_train_step{{{RANK}}}", "1+1x150"),
         (f"helixrun_train_total_steps{{{RANK}}}", "1000x150")],
        [alert("HelixrunCheckpointOverdue", "80m"),
         alert("HelixrunCheckpointOverdue", "100m", RUN_LABELS)],
    ),
    "restarts looping": (
        [('helixrun_operator_restarts_observed_total{namespace="ns",run="r"}', "0 0 1 2 3 4 4 4 4 4")],
        [alert("HelixrunRestartsLooping", "2m"),
         alert("HelixrunRestartsLooping", "8m", RUN_LABELS)],
    ),
    "GPU memory near the limit, joined to the run through its pod": (
        [('DCGM_FI_DEV_FB_USED{namespace="ns",pod="r-worker-0",gpu="0"}', "70000x5 79500x20"),
         ('DCGM_FI_DEV_FB_FREE{namespace="ns",pod="r-worker-0",gpu="0"}', "11000x5 500x20"),
         ('DCGM_FI_DEV_FB_USED{namespace="ns",pod="other",gpu="0"}', "79500x25"),
         ('DCGM_FI_DEV_FB_FREE{namespace="ns",pod="other",gpu="0"}', "500x25"),
         (f'helixrun_train_info{{{RANK},pod="r-worker-0",recipe="esm2-mlm",pool="a800",method="full",'
          f'precision="bf16"}}', "1x25")],
        [alert("HelixrunGPUMemoryNearLimit", "8m"),
         alert("HelixrunGPUMemoryNearLimit", "20m", {**RUN_LABELS, "pod": "r-worker-0", "gpu": "0"})],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_with_default_windows(case, tmp_path):
    series, checks = CASES[case]
    rules = alerts.rules_file()  # the chart's defaults
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations")  # promtool compares annotations too; their templates are checked by promtool check rules
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
                   "alert_rule_test": checks}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run([require("promtool"), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"{case}:\n{proc.stdout}{proc.stderr}"


def test_every_alert_has_a_firing_case():
    fired = {check["alertname"] for series, checks in CASES.values() for check in checks if check["exp_alerts"]}
    assert fired == {a.name for a in alerts.ALERTS}
