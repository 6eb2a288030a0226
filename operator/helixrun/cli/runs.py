"""`helixrun status`, `helixrun watch`, `helixrun plot`: follow runs in a cluster or in a local run folder.

A RUN argument that is an existing directory (or `--dir DIR`) is a local run
made by `helixrun-train --local --workdir DIR`: its records/metrics.jsonl,
checkpoints/step-*/manifest.json and config.yaml are read. Anything else is a
TrainingRun name in the cluster: its status is read with the Kubernetes client,
and curves come from Prometheus (`--prometheus URL`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from helixrun import api

# Phases after which nothing changes by itself: watch stops there. Stopped: a local run nobody trains any more.
FINISHED = ("Succeeded", "Failed", "Stopped")


# -- what a run looks like, wherever it runs -------------------------------------


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


# -- local run folders --------------------------------------------------------------


def is_local(target: str | None) -> bool:
    return bool(target) and Path(target).is_dir()


def read_records(workdir: Path) -> list[dict]:
    path = workdir / "records" / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a half-written last line of a killed trainer
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_checkpoints(workdir: Path) -> list[dict]:
    """Manifests of complete checkpoints, oldest first."""
    out = []
    for manifest in sorted((workdir / "checkpoints").glob("step-*/manifest.json")):
        if not (manifest.parent / "COMPLETE").exists():
            continue
        try:
            out.append(json.loads(manifest.read_text()))
        except ValueError:
            continue
    return sorted(out, key=lambda m: m.get("step", 0))


def _local_config(workdir: Path) -> dict:
    for path in (workdir / "config.yaml", workdir / "records" / "config.yaml"):
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def local_view(workdir: str | Path, stale_after: float = 300.0) -> RunView:
    workdir = Path(workdir)
    config = _local_config(workdir)
    spec = config.get("spec") or {}
    view = RunView(
        name=config.get("name") or workdir.name,
        namespace=config.get("namespace") or "default",
        total_steps=(spec.get("training") or {}).get("maxSteps"),
        source=str(workdir),
    )
    records = read_records(workdir)
    checkpoints = read_checkpoints(workdir)
    if records:
        last = records[-1]
        view.step, view.loss = int(last["step"]), last.get("loss")
        view.tokens_per_second = last.get("tokens_per_second")
    if checkpoints:
        view.checkpoint_step = checkpoints[-1].get("step")
        view.checkpoint_time = checkpoints[-1].get("created_unix")
        view.step = max(view.step or 0, view.checkpoint_step or 0)
    metrics_file = workdir / "records" / "metrics.jsonl"
    updated = metrics_file.stat().st_mtime if metrics_file.exists() else None
    if (workdir / "checkpoints" / "final").is_dir() or (view.total_steps and view.step and view.step >= view.total_steps):
        view.phase, view.eta_seconds = "Succeeded", 0.0
    elif updated is None:
        view.phase = "Pending"
    elif time.time() - updated > stale_after:
        view.phase, view.message = "Stopped", f"no record for {time.time() - updated:.0f}s"
    else:
        view.phase = "Running"
    if view.eta_seconds is None and view.total_steps and view.step is not None:
        view.eta_seconds = _eta_from_checkpoints(checkpoints, view.total_steps - view.step)
    return view


def _eta_from_checkpoints(checkpoints: list[dict], steps_left: int) -> float | None:
    # Records carry no wall time; the two newest checkpoints give seconds per step.
    timed = [c for c in checkpoints if c.get("created_unix") and c.get("step") is not None]
    if len(timed) < 2 or timed[-1]["step"] == timed[-2]["step"]:
        return None
    per_step = (timed[-1]["created_unix"] - timed[-2]["created_unix"]) / (timed[-1]["step"] - timed[-2]["step"])
    return max(steps_left, 0) * max(per_step, 0.0)


def local_curves(workdir: str | Path) -> Curves:
    curves = Curves()
    for record in read_records(Path(workdir)):
        step = float(record["step"])
        if "loss" in record:
            curves.steps.append(step)
            curves.loss.append(_num(record.get("loss")))
            curves.lr.append(_num(record.get("lr")))
            curves.tokens_per_second.append(_num(record.get("tokens_per_second")))
        for key, value in record.items():
            if key.startswith("eval_"):
                xs, ys = curves.eval.setdefault(key[len("eval_"):], ([], []))
                xs.append(step)
                ys.append(_num(value))
    return curves


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# -- the cluster --------------------------------------------------------------------


def _custom_objects():
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:  # no kubeconfig: maybe inside a pod
        try:
            config.load_incluster_config()
        except config.ConfigException as exc:
            raise SystemExit(f"helixrun: no cluster to ask ({exc}); give a local run folder or set KUBECONFIG") from None
    return client.CustomObjectsApi()


def cluster_views(name: str | None, namespace: str | None, all_namespaces: bool) -> list[RunView]:
    objects = _custom_objects()
    from kubernetes.client.exceptions import ApiException

    if name:
        try:
            items = [objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace or "default", api.PLURAL,
                                                          name)]
        except ApiException as exc:
            if exc.status == 404:
                raise SystemExit(f"helixrun: TrainingRun {namespace or 'default'}/{name} not found "
                                 "(a local run folder? it does not exist)") from None
            raise
    elif all_namespaces:
        items = objects.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    else:
        items = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace or "default", api.PLURAL)["items"]
    return [view_from_object(obj) for obj in items]


def view_from_object(obj: dict) -> RunView:
    """A RunView from a TrainingRun object's status (pure: tested without a cluster)."""
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
        loss=_num(loss) if loss not in (None, "") else None,
        tokens_per_second=progress.get("tokensPerSecond"),
        checkpoint_step=checkpoint.get("step"),
        checkpoint_time=_parse_time(checkpoint.get("time")),
        source="cluster",
        message=status.get("message") or "",
    )
    if view.phase == "Succeeded":
        view.eta_seconds = 0.0
    return view


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- Prometheus ------------------------------------------------------------------------


def prom_query(url: str, query: str, params: dict | None = None, path: str = "query", timeout: float = 10.0):
    args = urllib.parse.urlencode({"query": query, **(params or {})})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/{path}?{args}", timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {query!r}: {body.get('error')}")
    return body["data"]["result"]


def _selector(view_or_name: RunView | str, namespace: str) -> str:
    name = view_or_name.name if isinstance(view_or_name, RunView) else view_or_name
    return f'{{run="{name}", namespace="{namespace}"}}'


def enrich_from_prometheus(view: RunView, url: str) -> RunView:
    """Fill ETA, throughput and loss from the trainer's series where the status lacks them."""
    sel = _selector(view, view.namespace)
    queries = {
        "eta_seconds": f"max(helixrun_train_eta_seconds{sel})",
        "tokens_per_second": f"sum(helixrun_train_tokens_per_second{sel})",
        "loss": f"avg(helixrun_train_loss{sel})",
        "step": f"max(helixrun_train_step{sel})",
    }
    # The status is written by the operator now and then; the live series win for ETA and throughput.
    live_wins = ("eta_seconds", "tokens_per_second")
    for attr, query in queries.items():
        result = prom_query(url, query)
        if not result or (getattr(view, attr) is not None and attr not in live_wins):
            continue
        value = _num(result[0]["value"][1])
        setattr(view, attr, int(value) if attr == "step" and math.isfinite(value) else value)
    return view


def prometheus_curves(url: str, name: str, namespace: str, since_seconds: float, points: int = 500) -> Curves:
    end = time.time()
    start = end - since_seconds
    resolution = max(since_seconds / points, 1.0)
    sel = _selector(name, namespace)
    window = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{resolution:.3f}"}

    def series(query: str) -> dict[float, float]:
        result = prom_query(url, query, window, path="query_range")
        return {float(t): _num(v) for t, v in result[0]["values"]} if result else {}

    step = series(f"max(helixrun_train_step{sel})")
    loss = series(f"avg(helixrun_train_loss{sel})")
    lr = series(f"max(helixrun_train_learning_rate{sel})")
    tps = series(f"sum(helixrun_train_tokens_per_second{sel})")
    curves = Curves()
    for t in sorted(step):  # same start/end/step: the timestamps line up
        curves.steps.append(step[t])
        curves.loss.append(loss.get(t, math.nan))
        curves.lr.append(lr.get(t, math.nan))
        curves.tokens_per_second.append(tps.get(t, math.nan))
    for item in prom_query(url, f"max by (metric) (helixrun_eval_metric{sel})", window, path="query_range"):
        metric = item["metric"].get("metric", "eval").removeprefix("eval_")
        xs, ys = curves.eval.setdefault(metric, ([], []))
        for t, v in item["values"]:
            if float(t) in step:
                xs.append(step[float(t)])
                ys.append(_num(v))
    return curves


# -- rendering ---------------------------------------------------------------------------


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _fmt_num(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def row(view: RunView, now: float | None = None) -> dict[str, str]:
    now = time.time() if now is None else now
    step = "-" if view.step is None else str(view.step)
    total = "?" if view.total_steps is None else str(view.total_steps)
    checkpoint = "-"
    if view.checkpoint_step is not None:
        age = f", {_fmt_duration(now - view.checkpoint_time)} ago" if view.checkpoint_time else ""
        checkpoint = f"step {view.checkpoint_step}{age}"
    return {
        "RUN": view.name,
        "NAMESPACE": view.namespace,
        "PHASE": view.phase,
        "STEP": f"{step}/{total}",
        "LOSS": _fmt_num(view.loss, ".4f"),
        "TOKENS/S": _fmt_num(view.tokens_per_second, ",.0f"),
        "ETA": _fmt_duration(view.eta_seconds),
        "LAST CHECKPOINT": checkpoint,
    }


def status_table(views: list[RunView]):
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = list(row(RunView(name="")).keys())
    for column in columns:
        table.add_column(column, justify="right" if column in ("STEP", "LOSS", "TOKENS/S", "ETA") else "left")
    now = time.time()
    for view in views:
        table.add_row(*row(view, now).values())
    return table


def plot_curves(curves: Curves, title: str):
    """A figure with loss, evaluation metrics, learning rate and throughput against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (ax_loss, ax_eval), (ax_lr, ax_tps) = axes
    fig.suptitle(title)

    ax_loss.plot(curves.steps, curves.loss, label="train loss", linewidth=1)
    if "loss" in curves.eval:
        xs, ys = curves.eval["loss"]
        ax_loss.plot(xs, ys, "o-", label="eval loss", markersize=3)
    ax_loss.set(title="Loss", xlabel="step", ylabel="loss (nats)")
    ax_loss.legend(loc="best")

    others = {k: v for k, v in curves.eval.items() if k != "loss"}
    for metric, (xs, ys) in sorted(others.items()):
        ax_eval.plot(xs, ys, "o-", label=metric, markersize=3)
    ax_eval.set(title="Evaluation metrics", xlabel="step", ylabel="value")
    if others:
        ax_eval.legend(loc="best")
    else:
        ax_eval.text(0.5, 0.5, "no evaluation metrics besides loss", ha="center", va="center", transform=ax_eval.transAxes)

    ax_lr.plot(curves.steps, curves.lr, color="tab:green", linewidth=1)
    ax_lr.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    ax_tps.plot(curves.steps, curves.tokens_per_second, color="tab:orange", linewidth=1)
    ax_tps.set(title="Throughput", xlabel="step", ylabel="tokens/s")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig


# -- commands -------------------------------------------------------------------------------


def _target(args) -> str | None:
    return getattr(args, "dir", None) or getattr(args, "run", None)


def _one_run(args, command: str) -> str:
    target = _target(args)
    if not target:  # following "whichever run the API lists first" would be a guess
        raise SystemExit(f"helixrun {command}: name the run (RUN) or a local run folder (--dir DIR)")
    return target


def _views(args) -> list[RunView]:
    target = _target(args)
    if is_local(target):
        return [local_view(target)]
    if getattr(args, "dir", None):
        raise SystemExit(f"helixrun: {args.dir} is not a run folder")
    views = cluster_views(target, args.namespace, getattr(args, "all_namespaces", False))
    if args.prometheus:
        views = [enrich_from_prometheus(v, args.prometheus) for v in views]
    return views


def cmd_status(args) -> int:
    from rich.console import Console

    views = _views(args)
    console = Console(width=args.width) if args.width else Console()
    if not views:
        console.print("no TrainingRuns found")
        return 0
    console.print(status_table(views))
    return 0


def cmd_watch(args) -> int:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    _one_run(args, "watch")
    console = Console(width=args.width) if args.width else Console()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), console=console, auto_refresh=False)
    task = progress.add_task(_target(args) or "", total=None, detail="")

    def frame() -> RunView:
        (view,) = _views(args)[:1] or [RunView(name=_target(args) or "?", phase="NotFound")]
        detail = (f"{view.phase}  loss {_fmt_num(view.loss, '.4f')}  {_fmt_num(view.tokens_per_second, ',.0f')} tok/s"
                  f"  ETA {_fmt_duration(view.eta_seconds)}")
        progress.update(task, description=f"{view.namespace}/{view.name}", total=view.total_steps,
                        completed=view.step or 0, detail=detail)
        return view

    deadline = time.monotonic() + args.timeout if args.timeout else None
    if args.once:
        view = frame()
        console.print(Group(progress.get_renderable(), status_table([view])))
        return 0
    try:
        with Live(progress.get_renderable(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                view = frame()
                live.update(Group(progress.get_renderable()))
                if view.finished:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    console.print(f"stopped watching after {args.timeout:.0f}s; the run is {view.phase}")
                    return 1
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130
    if not console.is_terminal:
        console.print()
    console.print(status_table([view]))
    return 0 if view.phase == "Succeeded" else 1


def cmd_plot(args) -> int:
    target = _one_run(args, "plot")
    if is_local(target):
        curves = local_curves(target)
        view = local_view(target)
    elif args.prometheus:
        curves = prometheus_curves(args.prometheus, target, args.namespace or "default", args.since)
        view = RunView(name=target, namespace=args.namespace or "default")
    else:
        raise SystemExit("helixrun plot: a cluster run needs --prometheus URL (or give a local run folder)")
    if not curves.steps:
        raise SystemExit(f"helixrun plot: no training records for {target}")
    fig = plot_curves(curves, f"{view.namespace}/{view.name}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(args.output)
    return 0


def _common(parser, *, run_required: bool) -> None:
    parser.add_argument("run", nargs=None if run_required else "?", metavar="RUN",
                        help="TrainingRun name, or a local run folder (helixrun-train --workdir)")
    parser.add_argument("--dir", type=Path, help="a local run folder (instead of RUN)")
    parser.add_argument("-n", "--namespace", help="namespace of the run (default: default)")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus to read the trainer's series from")
    parser.add_argument("--width", type=int, default=0, help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def register(subparsers) -> None:
    status = subparsers.add_parser("status", help="table of runs: phase, step/total, loss, tokens/s, ETA, last checkpoint")
    _common(status, run_required=False)
    status.add_argument("-A", "--all-namespaces", action="store_true", help="runs of every namespace")
    status.set_defaults(func=cmd_status)

    watch = subparsers.add_parser("watch", help="follow one run live with a progress bar until it finishes")
    _common(watch, run_required=False)
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    watch.add_argument("--timeout", type=float, default=0.0, help="stop watching after this many seconds (0: never)")
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.set_defaults(func=cmd_watch)

    plot = subparsers.add_parser("plot", help="plot loss, evaluation metrics, LR and throughput to a PNG")
    _common(plot, run_required=False)
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    plot.add_argument("--since", type=float, default=6 * 3600, help="seconds of history to read from Prometheus")
    plot.add_argument("--dpi", type=int, default=100)
    plot.set_defaults(func=cmd_plot)
