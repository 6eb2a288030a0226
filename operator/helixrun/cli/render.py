"""`helixrun render`: print exactly the objects the operator would create, no cluster needed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from helixrun import api
from helixrun.cli import runfile
from helixrun.pools import PoolConfigError, load_pools
from helixrun.render import PlanRefused, RenderSettings, render_run
from helixrun.trainer_pod import BACKEND_CHOICES
from helixrun.resolve import resolve


class ManifestDumper(yaml.SafeDumper):
    """Block style for multi-line strings (the resolved config), no anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


ManifestDumper.add_representer(str, _str)


def register(subparsers) -> None:
    parser = subparsers.add_parser("render", help="print the Kubernetes objects the operator creates for a run")
    runfile.add_arguments(parser)
    parser.add_argument("-n", "--namespace", help="namespace for runs that do not set one")
    parser.add_argument("--backend", choices=BACKEND_CHOICES,
                        help="the job kind to render (default: HELIXRUN_BACKEND, else auto, which offline is pytorchjob)")
    parser.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.filename)
    try:
        settings = RenderSettings.from_env()
        if args.backend:
            settings = dataclasses.replace(settings, backend=args.backend)
        pools = load_pools(args.pools)
        runs = runfile.read_runs(args)
        objects = []
        for training_run in runs:
            if args.namespace and training_run.namespace == "default":
                training_run = api.TrainingRun(**{**training_run.__dict__, "namespace": args.namespace})
            resolved = resolve(training_run, pools, source=str(path), overrides=args.set)
            objects += render_run(resolved, settings)
    except (api.InvalidRun, PoolConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PlanRefused as exc:
        print(f"error: plan refused: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"error: {path}: {exc.strerror}", file=sys.stderr)
        return 2
    yaml.dump_all(objects, sys.stdout, Dumper=ManifestDumper, sort_keys=False)
    return 0
