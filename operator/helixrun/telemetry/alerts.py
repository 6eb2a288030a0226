"""Alert rules as data.

Each rule is a PromQL template whose windows, `for:` durations and thresholds
are named parameters. One set of rules renders two ways:

- `rules_file(params)`: a plain Prometheus rules file with the values filled
  in (the tests load it with windows of seconds);
- `helm_rules_file()`: the chart's `rules/helixrun-alerts.yaml`, where every
  parameter is a `.Values.monitoring.prometheusRule.rules.<name>` reference and
  Prometheus' own `{{ }}` templates are escaped, read by the PrometheusRule
  template through `tpl`.

`python -m helixrun.telemetry.alerts` rewrites the chart's file; a test fails
when the committed file differs from the generated one.
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path


from helixrun.telemetry import dcgm

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "helixrun"
RULES_FILE = "rules/helixrun-alerts.yaml"
GROUP = "helixrun.training"
VALUES_PATH = ".Values.monitoring.prometheusRule.rules"

# Trainer targets carry a `run` target label: the PodMonitor copies it from the pod label
# helixrun.io/run; a static scrape config sets it by hand.
TRAINER_UP = 'up{run!=""}'


@dataclass(frozen=True)
class Param:
    name: str
    default: str | int | float
    help: str


PARAMS: tuple[Param, ...] = (
    Param("stalledWindow", "15m", "No step progress in this window counts as a stall."),
    Param("stalledFor", "5m", "How long a stall must last before the alert fires."),
    Param("lossWindow", "10m", "Look-back for the last loss sample (so a trainer that exits on NaN still alerts)."),
    Param("lossNaNFor", "1m", "How long a NaN or infinite loss must persist."),
    Param("divergeFactor", 2, "Loss diverges when its short-window mean exceeds this multiple of its long-window minimum."),
    Param("divergeShortWindow", "10m", "Window of the recent mean loss."),
    Param("divergeLongWindow", "1h", "Window of the reference minimum loss."),
    Param("divergeFor", "10m", "How long the divergence must last."),
    Param("checkpointIntervalSeconds", 1800, "Expected seconds between checkpoints (spec.checkpointing.everySteps x step time)."),
    Param("checkpointMissedIntervals", 3, "Alert after this many checkpoint intervals without a checkpoint."),
    Param("checkpointFor", "5m", "How long the checkpoint may stay overdue before the alert fires."),
    Param("restartsWindow", "1h", "Window in which restarts are counted."),
    Param("restartsThreshold", 3, "Restarts within restartsWindow that count as a restart loop."),
    Param("restartsFor", "1m", "How long the restart count must stay over the threshold."),
    Param("gpuMemoryRatio", 0.95, "Fraction of GPU framebuffer in use that counts as near the limit (DCGM)."),
    Param("gpuMemoryFor", "10m", "How long GPU memory must stay near the limit."),
)
DEFAULTS = {p.name: p.default for p in PARAMS}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str  # PromQL with ${param} placeholders
    for_: str  # a ${param} placeholder
    severity: str
    summary: str
    description: str  # Prometheus template text ({{ $labels.x }}, {{ $value }})


def _j(*lines: str) -> str:
    return "\n".join(lines)


ALERTS: tuple[Alert, ...] = (
    Alert(
        "HelixrunTrainingStalled",
        _j(
            "(",
            "  max by (namespace, run) (changes(helixrun_train_step[${stalledWindow}])) == 0",
            "  and on (namespace, run)",
            "  max by (namespace, run) (helixrun_train_step) < max by (namespace, run) (helixrun_train_total_steps)",
            ")",
            "or",
            f"min by (namespace, run) ({TRAINER_UP}) == 0",
        ),
        "${stalledFor}",
        "warning",
        "Training run {{ $labels.namespace }}/{{ $labels.run }} makes no step progress",
        "No optimizer step completed in the last ${stalledWindow} (a hung collective, a stuck data loader), "
        "or a trainer's metrics endpoint stopped answering (a crashed or frozen process).",
    ),
    Alert(
        "HelixrunLossNaN",
        _j(
            "last_over_time(helixrun_train_loss[${lossWindow}]) != last_over_time(helixrun_train_loss[${lossWindow}])",
            "or",
            "abs(last_over_time(helixrun_train_loss[${lossWindow}])) == +Inf",
        ),
        "${lossNaNFor}",
        "critical",
        "Training loss of {{ $labels.namespace }}/{{ $labels.run }} rank {{ $labels.rank }} is NaN or infinite",
        "The last training loss is {{ $value }}. Lower the learning rate, check the data, or resume from an earlier checkpoint.",
    ),
    Alert(
        "HelixrunLossDiverging",
        _j(
            "avg by (namespace, run) (avg_over_time(helixrun_train_loss[${divergeShortWindow}]))",
            "  > ${divergeFactor} * avg by (namespace, run) (min_over_time(helixrun_train_loss[${divergeLongWindow}]))",
        ),
        "${divergeFor}",
        "warning",
        "Training loss of {{ $labels.namespace }}/{{ $labels.run }} is diverging",
        "The mean loss over ${divergeShortWindow} is {{ $value }}, more than ${divergeFactor}x the lowest loss "
        "of the last ${divergeLongWindow}.",
    ),
    Alert(
        "HelixrunCheckpointOverdue",
        _j(
            "(time() - max by (namespace, run) (helixrun_checkpoint_last_timestamp_seconds > 0))",
            "  > ${checkpointMissedIntervals} * ${checkpointIntervalSeconds}",
            "and on (namespace, run)",
            "max by (namespace, run) (helixrun_train_step) < max by (namespace, run) (helixrun_train_total_steps)",
        ),
        "${checkpointFor}",
        "warning",
        "No checkpoint of {{ $labels.namespace }}/{{ $labels.run }} for {{ $value | humanizeDuration }}",
        "The last complete checkpoint is older than ${checkpointMissedIntervals} checkpoint intervals "
        "(${checkpointIntervalSeconds}s each); a restart now would lose that much work.",
    ),
    Alert(
        "HelixrunRestartsLooping",
        "sum by (namespace, run) (increase(helixrun_operator_restarts_observed_total[${restartsWindow}])) >= ${restartsThreshold}",
        "${restartsFor}",
        "warning",
        "Training run {{ $labels.namespace }}/{{ $labels.run }} keeps restarting",
        "{{ $value }} gang restarts in ${restartsWindow}: the run fails, resumes and fails again.",
    ),
    Alert(
        "HelixrunGPUMemoryNearLimit",
        _j(
            "(",
            f"  max by ({dcgm.NAMESPACE_LABEL}, {dcgm.POD_LABEL}, gpu) (",
            "    DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
            "  ) > ${gpuMemoryRatio}",
            ")",
            f"* on ({dcgm.NAMESPACE_LABEL}, {dcgm.POD_LABEL}) group_left (run)",
            f"  max by ({dcgm.NAMESPACE_LABEL}, {dcgm.POD_LABEL}, run) (helixrun_train_info)",
        ),
        "${gpuMemoryFor}",
        "warning",
        "GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }} (run {{ $labels.run }}) is near its memory limit",
        "{{ $value | humanizePercentage }} of the framebuffer is in use; the next larger batch or sequence may run out of memory.",
    ),
)


# One line per alert for docs/METRICS.md.
WHEN = {
    "HelixrunTrainingStalled": "the step has not changed for `stalledWindow` while steps remain, "
    "or a trainer target is down (`up == 0`), for `stalledFor`",
    "HelixrunLossNaN": "the last loss sample of a rank within `lossWindow` is NaN or ±Inf, for `lossNaNFor` "
    "(still fires after the trainer exits)",
    "HelixrunLossDiverging": "the mean loss over `divergeShortWindow` exceeds `divergeFactor` × the minimum over "
    "`divergeLongWindow`, for `divergeFor`",
    "HelixrunCheckpointOverdue": "the last checkpoint is older than `checkpointMissedIntervals` × "
    "`checkpointIntervalSeconds` while steps remain, for `checkpointFor`",
    "HelixrunRestartsLooping": "the operator observed ≥ `restartsThreshold` gang restarts in `restartsWindow`",
    "HelixrunGPUMemoryNearLimit": "a run's GPU uses more than `gpuMemoryRatio` of its framebuffer (DCGM), "
    "for `gpuMemoryFor`",
}


def _fill(text: str, values: dict) -> str:
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def rules_file(params: dict | None = None) -> dict:
    """A Prometheus rules file (dict) with the parameters filled in."""
    values = {**DEFAULTS, **(params or {})}
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown alert parameters: {sorted(unknown)}")
    rules = []
    for alert in ALERTS:
        rules.append(
            {
                "alert": alert.name,
                "expr": _fill(alert.expr, values),
                "for": _fill(alert.for_, values),
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": _fill_text(alert.summary, values),
                    "description": _fill_text(alert.description, values),
                },
            }
        )
    return {"groups": [{"name": GROUP, "rules": rules}]}


def _fill_text(text: str, values: dict) -> str:
    # Prometheus templates use $labels/$value; only ${param} is ours.
    return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text)


def _helm_escape(text: str) -> str:
    # Prometheus' {{ }} must reach the PrometheusRule verbatim through Helm's tpl.
    return re.sub(r"(\{\{|\}\})", lambda m: "{{`" + m.group(1) + "`}}", text)


def _block(key: str, text: str, indent: int) -> list[str]:
    # Literal block scalars survive tpl whatever the text holds: quotes, braces, a leading {{ $value }}.
    pad = " " * indent
    return [f"{pad}{key}: |-", *(f"{pad}  {line}" for line in text.splitlines())]


def helm_rules_file() -> str:
    """The chart's rules file: Helm references for parameters, Prometheus templates escaped."""
    refs = {p.name: f"{{{{ {VALUES_PATH}.{p.name} }}}}" for p in PARAMS}
    lines = [
        "# Generated by `python -m helixrun.telemetry.alerts` from operator/helixrun/telemetry/alerts.py.",
        "# Do not edit: templates/monitoring/prometheusrule.yaml renders it through tpl.",
    ]
    for alert in ALERTS:
        lines.append(f"- alert: {alert.name}")
        lines += _block("expr", _fill(alert.expr, refs), 2)
        lines.append(f'  for: "{_fill(alert.for_, refs)}"')
        lines += ["  labels:", f"    severity: {alert.severity}", "  annotations:"]
        lines += _block("summary", _fill_text(_helm_escape(alert.summary), refs), 4)
        lines += _block("description", _fill_text(_helm_escape(alert.description), refs), 4)
    return "\n".join(lines) + "\n"


def helm_tpl(text: str, values: dict) -> str:
    """What Helm's tpl makes of helm_rules_file() for these rule values (for tests without helm)."""
    text = re.sub(r"\{\{ " + re.escape(VALUES_PATH) + r"\.(\w+) \}\}", lambda m: str(values[m.group(1)]), text)
    return text.replace("{{`{{`}}", "{{").replace("{{`}}`}}", "}}")


def write(chart_dir: Path = CHART_DIR) -> Path:
    path = chart_dir / RULES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(helm_rules_file())
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else CHART_DIR))
