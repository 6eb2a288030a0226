"""helixrun-train: the pod command and its local twin.

    helixrun-train --config /etc/helixrun/config.yaml                 # in a pod (the operator's resolved config)
    helixrun-train --local -f examples/run-esm2.yaml --workdir DIR [--tiny] [--set a.b=c ...] [--pools FILE]
    helixrun-train predict genechat --model CKPT/final --fasta gene.fa # a recipe's own command
    helixrun-train sample structdiff --model CKPT/final --num 8

`train` is the default command. The others (prepare, predict, sample, precompute)
belong to a recipe: `helixrun-train <command> <recipe> ARGS` runs
`python -m helixrun_trainer.recipes.<module> <command> ARGS`.

--tiny makes the run a smoke run (spec.smokeTest: the recipe's tiny models on
generated data, helixrun/smoke.py) on one local process with a demo budget:
it stands for the --set assignments in TINY_SETS, applied before yours, and
yours win over the smoke budget as well. The config a pod reads says whether it
is a smoke run; no flag is needed there.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import yaml

from helixrun_trainer.errors import EXIT_CONFIG, EXIT_PLAN, exit_code_for

log = logging.getLogger("helixrun_trainer")

RECIPE_COMMANDS = ("prepare", "predict", "sample", "precompute")
COMMANDS = ("train", *RECIPE_COMMANDS)

# --tiny: a smoke run on this one process, with a budget for a demo (seconds, not the pod smoke run's minute).
TINY_SETS = (
    "smokeTest=true", "hardware.nodes=1", "hardware.gpusPerNode=1",
    "training.epochs=null", "training.maxSteps=40", "checkpointing.everySteps=5", "evaluation.everySteps=10",
)


def resolve_local(obj: dict, workdir: Path, *, tiny: bool = False, sets=(), pools_file=None, source: str = ""):
    """A TrainingRun object resolved for a local run in `workdir`: --tiny's and the caller's --set applied."""
    from helixrun import api, pools, resolve

    sets = [*(TINY_SETS if tiny else ()), *sets]
    run = api.TrainingRun.from_object(resolve.apply_sets(obj, sets), source)
    return resolve.resolve(run, pools.load_pools(pools_file), resolve.local_paths(workdir), source, overrides=sets)


def local_config(args) -> "ResolvedRun":  # noqa: F821
    from helixrun import api

    source = str(args.file)
    text = Path(args.file).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1:
        raise api.InvalidRun([("", f"expected one TrainingRun, found {len(docs)}")], source)
    cfg = resolve_local(docs[0], args.workdir, tiny=args.tiny, sets=args.set or [], pools_file=args.pools, source=source)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") in ("0", ""):
        (workdir / "config.yaml").write_text(cfg.to_yaml())
    return cfg


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="resolved config (pod mode); default /etc/helixrun/config.yaml")
    p.add_argument("--local", action="store_true", help="resolve a TrainingRun file here instead of reading --config")
    p.add_argument("-f", "--file", type=Path, help="TrainingRun YAML (with --local)")
    p.add_argument("--workdir", type=Path, default=Path("runs/local"), help="local run folder (checkpoints/, records/)")
    p.add_argument("--tiny", action="store_true", help="a smoke run (tiny models, generated data) on one process: "
                   "seconds on a CPU (--local only)")
    p.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a spec field (repeatable)")
    p.add_argument("--pools", type=Path, default=None, help="pools file (default: the packaged pools)")
    p.add_argument("--metrics-port", type=int, default=None, help="override spec.metrics.port (0: ephemeral)")


def run_train(args) -> int:
    from helixrun import api
    from helixrun.resolve import CONFIG_DIR, CONFIG_FILE, ResolvedRun

    try:
        if args.local:
            if not args.file:
                raise api.InvalidRun([("-f", "--local needs -f FILE")])
            cfg = local_config(args)
        else:
            path = args.config or Path(CONFIG_DIR) / CONFIG_FILE
            cfg = ResolvedRun.from_yaml(Path(path).read_text())
            if args.set or args.tiny:
                log.warning("--set and --tiny apply in local mode only; the pod's config is already resolved "
                            "(spec.smokeTest says whether it is a smoke run)")
    except (api.InvalidRun, OSError, ValueError) as exc:
        print(f"helixrun-train: invalid run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not cfg.plan.fits:
        print(f"helixrun-train: the plan does not fit: {cfg.plan.refusal}", file=sys.stderr)
        return EXIT_PLAN
    from helixrun_trainer.loop import train

    port = -1 if args.metrics_port is None else args.metrics_port
    return train(cfg, metrics_port=port)


def run_recipe_command(command: str, argv: list[str]) -> int:
    """Hand `helixrun-train <command> <recipe> ...` to the recipe module's own command line."""
    from helixrun_trainer.recipes import MODULES

    if not argv or argv[0] not in MODULES:
        print(f"usage: helixrun-train {command} {{{','.join(sorted(MODULES))}}} ...", file=sys.stderr)
        return EXIT_CONFIG
    module = importlib.import_module(f"helixrun_trainer.recipes.{MODULES[argv[0]]}")
    main = getattr(module, "main", None) or getattr(importlib.import_module(f"{module.__name__}.__main__"), "main", None)
    if main is None:
        print(f"helixrun-train: recipe {argv[0]} has no commands", file=sys.stderr)
        return EXIT_CONFIG
    return main([command, *argv[1:]])


def setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=os.environ.get("HELIXRUN_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s rank={rank} %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    command = argv[0] if argv and argv[0] in COMMANDS else "train"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    if command in RECIPE_COMMANDS:
        return run_recipe_command(command, argv)
    parser = argparse.ArgumentParser(prog="helixrun-train")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except Exception as exc:
        code = exit_code_for(exc)
        log.exception("exiting %d: %s", code, exc)
        return code


if __name__ == "__main__":
    sys.exit(main())
