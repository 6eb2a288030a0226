"""`helixrun status`, `helixrun watch`, `helixrun plot`: read, view, draw (see the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from helixrun.cli.runs import files, views


def _target(args) -> str | None:
    return getattr(args, "dir", None) or getattr(args, "run", None)


def _one_run(args, command: str) -> str:
    target = _target(args)
    if not target:  # following "whichever run the API lists first" would be a guess
        raise SystemExit(f"helixrun {command}: name the run (RUN) or a local run folder (--dir DIR)")
    return target


def _views(args) -> list[views.RunView]:
    target = _target(args)
    if files.is_run_folder(target):
        return [views.local_view(files.read_local_run(target), now=time.time())]
    if getattr(args, "dir", None):
        raise SystemExit(f"helixrun: {args.dir} is not a run folder")
    from helixrun.cli.runs import cluster

    found = [views.view_from_object(obj)
             for obj in cluster.trainingruns(target, args.namespace, getattr(args, "all_namespaces", False),
                                             args.context)]
    if args.prometheus:
        from helixrun.cli.runs import prometheus

        found = [views.with_live_values(v, prometheus.live_values(args.prometheus, v.name, v.namespace))
                 for v in found]
    return found


def _console(args):
    from rich.console import Console

    return Console(width=args.width) if args.width else Console()


def cmd_status(args) -> int:
    from helixrun.cli.runs.table import status_table

    found = _views(args)
    if args.output != "table":
        _print_data([dataclasses.asdict(v) for v in found], args.output)
        return 0
    console = _console(args)
    if not found:
        console.print("no TrainingRuns found")
        return 0
    console.print(status_table(found, now=time.time()))
    return 0


def _print_data(data, output: str) -> None:
    """Machine-readable output: one list, whatever the number of runs (none is `[]`)."""
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")


def cmd_watch(args) -> int:
    from rich.console import Group
    from rich.live import Live

    from helixrun.cli.runs.table import ProgressBar, status_table

    target = _one_run(args, "watch")
    console = _console(args)
    bar = ProgressBar(console, target)

    def frame() -> views.RunView:
        (view,) = _views(args)[:1] or [views.RunView(name=target, phase="NotFound")]
        bar.show(view)
        return view

    deadline = time.monotonic() + args.timeout if args.timeout else None
    if args.once:
        view = frame()
        console.print(Group(bar.renderable(), status_table([view], now=time.time())))
        return 0
    try:
        with Live(bar.renderable(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                view = frame()
                live.update(Group(bar.renderable()))
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
    console.print(status_table([view], now=time.time()))
    return 0 if view.phase == "Succeeded" else 1


def cmd_plot(args) -> int:
    target = _one_run(args, "plot")
    if files.is_run_folder(target):
        run = files.read_local_run(target)
        curves = views.curves_from_records(run.records)
        view = views.local_view(run, now=time.time())
    elif args.prometheus:
        from helixrun.cli.runs import cluster, prometheus

        namespace = args.namespace or cluster.connect(args.context)
        curves = views.curves_from_series(**prometheus.curve_series(args.prometheus, target, namespace, args.since))
        view = views.RunView(name=target, namespace=namespace)
    else:
        raise SystemExit("helixrun plot: a cluster run needs --prometheus URL (or give a local run folder)")
    if not curves.steps:
        raise SystemExit(f"helixrun plot: no training records for {target}")
    from helixrun.cli.runs.plot import plot_curves

    fig = plot_curves(curves, f"{view.namespace}/{view.name}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(args.output)
    return 0


def _common(parser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN",
                        help="TrainingRun name, or a local run folder (helixrun-train --workdir)")
    parser.add_argument("--dir", type=Path, help="a local run folder (instead of RUN)")
    parser.add_argument("-n", "--namespace", help="namespace of the run (default: the kubeconfig context's)")
    parser.add_argument("--context", help="kubeconfig context to use (default: the current context)")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus to read the trainer's series from")
    parser.add_argument("--width", type=int, default=0, help=argparse.SUPPRESS)  # fixed width for tests


def register(subparsers) -> None:
    status = subparsers.add_parser("status", help="table of runs: phase, step/total, loss, tokens/s, ETA, last checkpoint")
    _common(status)
    status.add_argument("-A", "--all-namespaces", action="store_true", help="runs of every namespace")
    status.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                        help="the table, or every run's fields as JSON or YAML (a list)")
    status.set_defaults(func=cmd_status)

    watch = subparsers.add_parser("watch", help="follow one run live with a progress bar until it finishes")
    _common(watch)
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    watch.add_argument("--timeout", type=float, default=0.0, help="stop watching after this many seconds (0: never)")
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.set_defaults(func=cmd_watch)

    plot = subparsers.add_parser("plot", help="plot loss, evaluation metrics, LR and throughput to a PNG")
    _common(plot)
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    plot.add_argument("--since", type=float, default=6 * 3600, help="seconds of history to read from Prometheus")
    plot.add_argument("--dpi", type=int, default=100)
    plot.set_defaults(func=cmd_plot)
