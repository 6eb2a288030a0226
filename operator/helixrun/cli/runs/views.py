"""What a run looks like, wherever it runs: data in, views, curves and table rows out; no I/O.

The readers (files.py, cluster.py, prometheus.py) fetch; these functions decide
what the fetched data says, so each rule is tested without a cluster or a clock.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from helixrun.checkpoint_layout import CheckpointInfo
from helixrun.durations import format_duration

# Phases after which nothing changes by itself: watch stops there. Stopped: a local run nobody trains any more.
FINISHED = ("Succeeded", "Failed", "Stopped")
# Evaluation results are `eval_<metric>` in the trainer's records and in helixrun_eval_metric's label.
EVAL_PREFIX = "eval_"
# A local run whose records have not changed for this long is no longer trained.
STALE_AFTER_SECONDS = 300.0
COLUMNS = ("RUN", "NAMESPACE", "PHASE", "STEP", "LOSS", "TOKENS/S", "ETA", "LAST CHECKPOINT")
NUMERIC_COLUMNS = ("STEP", "LOSS", "TOKENS/S", "ETA")


@dataclass
class RunView:
    name: str
    namespace: str = "default"
    phase: str = "Unknown"
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None  # unix seconds
    source: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


@dataclass
class Curves:
    """Training and evaluation series against the optimizer step."""

    steps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    eval: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # metric -> (steps, values)


@dataclass(frozen=True)
class LocalRun:
    """A local run folder (`helixrun-train --local --workdir DIR`) as files.py read it."""

    folder: Path
    config: dict  # the ResolvedRun (config.yaml)
    records: list[dict]  # records/metrics.jsonl, oldest first
    checkpoints: list[CheckpointInfo]  # committed, manifest checksum verified, oldest first
    records_modified: float | None  # unix seconds; None: no records yet
    exported: bool  # final/ exists: training ended


# -- views ------------------------------------------------------------------------------


def local_view(run: LocalRun, now: float, stale_after: float = STALE_AFTER_SECONDS) -> RunView:
    spec = run.config.get("spec") or {}
    view = RunView(
        name=run.config.get("name") or run.folder.name,
        namespace=run.config.get("namespace") or "default",
        total_steps=(spec.get("training") or {}).get("maxSteps"),
        source=str(run.folder),
    )
    if run.records:
        last = run.records[-1]
        view.step, view.loss = int(last["step"]), last.get("loss")
        view.tokens_per_second = last.get("tokens_per_second")
    if run.checkpoints:
        newest = run.checkpoints[-1]
        view.checkpoint_step, view.checkpoint_time = newest.step, newest.manifest.get("created_unix")
        view.step = max(view.step or 0, newest.step)
    if run.exported or (view.total_steps and view.step and view.step >= view.total_steps):
        view.phase, view.eta_seconds = "Succeeded", 0.0
    elif run.records_modified is None:
        view.phase = "Pending"
    elif now - run.records_modified > stale_after:
        view.phase, view.message = "Stopped", f"no record for {now - run.records_modified:.0f}s"
    else:
        view.phase = "Running"
    if view.eta_seconds is None and view.total_steps and view.step is not None:
        view.eta_seconds = eta_from_checkpoints(run.checkpoints, view.total_steps - view.step)
    return view


def eta_from_checkpoints(checkpoints: list[CheckpointInfo], steps_left: int) -> float | None:
    # Records carry no wall time; the two newest checkpoints give seconds per step.
    timed = [c for c in checkpoints if c.manifest.get("created_unix")]
    if len(timed) < 2 or timed[-1].step == timed[-2].step:
        return None
    seconds = timed[-1].manifest["created_unix"] - timed[-2].manifest["created_unix"]
    per_step = seconds / (timed[-1].step - timed[-2].step)
    return max(steps_left, 0) * max(per_step, 0.0)


def view_from_object(obj: dict) -> RunView:
    """A RunView from a TrainingRun object's status."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    progress, checkpoint = status.get("progress") or {}, status.get("lastCheckpoint") or {}
    spec_total = ((obj.get("spec") or {}).get("training") or {}).get("maxSteps")
    loss = progress.get("loss")
    view = RunView(
        name=meta.get("name", "?"),
        namespace=meta.get("namespace", "default"),
        phase=status.get("phase") or "Pending",
        step=progress.get("step"),
        total_steps=progress.get("totalSteps") or spec_total,
        loss=number(loss) if loss not in (None, "") else None,
        tokens_per_second=progress.get("tokensPerSecond"),
        checkpoint_step=checkpoint.get("step"),
        checkpoint_time=parse_time(checkpoint.get("time")),
        source="cluster",
        message=status.get("message") or "",
    )
    if view.phase == "Succeeded":
        view.eta_seconds = 0.0
    return view


# The operator writes the status now and then; the trainer's live series win for these.
LIVE_WINS = ("eta_seconds", "tokens_per_second")


def with_live_values(view: RunView, live: dict[str, float]) -> RunView:
    """The view with the trainer's live values (RunView field -> value) where the status lacks them."""
    updates = {}
    for attr, value in live.items():
        if getattr(view, attr) is not None and attr not in LIVE_WINS:
            continue
        updates[attr] = int(value) if attr == "step" and math.isfinite(value) else value
    return replace(view, **updates)


# -- curves -----------------------------------------------------------------------------


def curves_from_records(records: list[dict]) -> Curves:
    curves = Curves()
    for record in records:
        step = float(record["step"])
        if "loss" in record:
            curves.steps.append(step)
            curves.loss.append(number(record.get("loss")))
            curves.lr.append(number(record.get("lr")))
            curves.tokens_per_second.append(number(record.get("tokens_per_second")))
        for key, value in record.items():
            if key.startswith(EVAL_PREFIX):
                xs, ys = curves.eval.setdefault(key.removeprefix(EVAL_PREFIX), ([], []))
                xs.append(step)
                ys.append(number(value))
    return curves


def curves_from_series(step: dict[float, float], loss: dict[float, float], lr: dict[float, float],
                       tokens_per_second: dict[float, float], evals: dict[str, dict[float, float]]) -> Curves:
    """Curves from time series ({unix time: value}) sampled at the same instants, put on the step axis."""
    curves = Curves()
    for t in sorted(step):
        curves.steps.append(step[t])
        curves.loss.append(loss.get(t, math.nan))
        curves.lr.append(lr.get(t, math.nan))
        curves.tokens_per_second.append(tokens_per_second.get(t, math.nan))
    for metric, series in evals.items():
        xs, ys = curves.eval.setdefault(metric.removeprefix(EVAL_PREFIX), ([], []))
        for t, value in sorted(series.items()):
            if t in step:
                xs.append(step[t])
                ys.append(value)
    return curves


# -- rows -------------------------------------------------------------------------------


def row(view: RunView, now: float) -> dict[str, str]:
    """The status table's cells for one run, keyed by COLUMNS."""
    step = "-" if view.step is None else str(view.step)
    total = "?" if view.total_steps is None else str(view.total_steps)
    checkpoint = "-"
    if view.checkpoint_step is not None:
        age = f", {format_duration(now - view.checkpoint_time)} ago" if view.checkpoint_time else ""
        checkpoint = f"step {view.checkpoint_step}{age}"
    cells = (view.name, view.namespace, view.phase, f"{step}/{total}", format_number(view.loss, ".4f"),
             format_number(view.tokens_per_second, ",.0f"), format_duration(view.eta_seconds), checkpoint)
    return dict(zip(COLUMNS, cells))


def progress_detail(view: RunView) -> str:
    """The line beside `helixrun watch`'s progress bar."""
    return (f"{view.phase}  loss {format_number(view.loss, '.4f')}  {format_number(view.tokens_per_second, ',.0f')} "
            f"tok/s  ETA {format_duration(view.eta_seconds)}")


def format_number(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def number(value) -> float:
    """A float, NaN for what is not a number (a record's missing field, a status's bad string)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_time(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time as the Kubernetes API writes it; None when absent or unreadable."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
