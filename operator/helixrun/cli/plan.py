"""`helixrun plan`: what the planner decides for a run, on its pool or on every pool side by side."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from helixrun import api
from helixrun.cli import runfile
from helixrun.planner import Plan, make_plan
from helixrun.durations import format_duration
from helixrun.pools import Pool, PoolConfigError, load_pools
from helixrun.resolve import spec_with_defaults

EXIT_INVALID = 2
EXIT_REFUSED = 3


def register(subparsers) -> None:
    parser = subparsers.add_parser("plan", help="show the hardware plan for a run (memory, batch, precision, ETA)")
    runfile.add_arguments(parser)
    parser.add_argument("--all-pools", action="store_true", help="plan the run on every pool, side by side")
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser.set_defaults(func=run)


def merged_spec(training_run: api.TrainingRun, source: str = "", overrides: Sequence[str] = ()):
    """The spec the planner sees: the run with its recipe's defaults, as the operator resolves it."""
    return api.RunSpec.model_validate(spec_with_defaults(training_run, source, overrides))


def on_pool(spec, pool: Pool) -> tuple[object, str | None]:
    """The spec moved to another pool; GPUs per node clamped to what the pool has (and said so)."""
    hardware = spec.hardware
    update = {"pool": pool.name}
    note = None
    if hardware.gpus_per_node > pool.gpus_per_node:
        update["gpus_per_node"] = pool.gpus_per_node
        note = f"gpusPerNode {hardware.gpus_per_node} clamped to the {pool.gpus_per_node} GPUs per node of {pool.name}"
    return spec.model_copy(update={"hardware": hardware.model_copy(update=update)}), note


def plans_for(training_run: api.TrainingRun, pools: dict[str, Pool], all_pools: bool, source: str = "",
              overrides: Sequence[str] = ()) -> dict[str, Plan]:
    spec = merged_spec(training_run, source, overrides)
    if not all_pools:
        pool = pools.get(spec.hardware.pool)
        if pool is None:
            known = ", ".join(sorted(pools))
            raise api.InvalidRun([("spec.hardware.pool", f"unknown pool {spec.hardware.pool!r} (known: {known})")], source)
        if spec.hardware.gpus_per_node > pool.gpus_per_node:
            raise api.InvalidRun(
                [("spec.hardware.gpusPerNode", f"{spec.hardware.gpus_per_node} exceeds the {pool.gpus_per_node} GPUs per node of pool {pool.name}")],
                source,
            )
        return {pool.name: make_plan(spec, pool, pools)}
    out = {}
    for name, pool in pools.items():
        moved, note = on_pool(spec, pool)
        plan = make_plan(moved, pool, pools)
        if note:
            plan = plan.model_copy(update={"notes": [note, *plan.notes]})
        out[name] = plan
    return out


def run(args) -> int:
    path = Path(args.filename)
    try:
        pools = load_pools(args.pools)
        runs = runfile.read_runs(args)
        results = {r.name: plans_for(r, pools, args.all_pools, str(path), args.set) for r in runs}
    except (api.InvalidRun, PoolConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"error: {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    except KeyError as exc:  # a model the catalog does not know
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    if args.output == "json":
        print(json.dumps(_dump(results, pools), indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(_dump(results, pools), sort_keys=False), end="")
    else:
        _print_tables(results, pools, args.all_pools)
    fits = [plan.fits for plans in results.values() for plan in plans.values()]
    return 0 if (any(fits) if args.all_pools else all(fits)) else EXIT_REFUSED


def _dump(results: dict[str, dict[str, Plan]], pools: dict[str, Pool]) -> dict:
    out = {}
    for name, plans in results.items():
        entries = {}
        for pool_name, plan in plans.items():
            data = plan.model_dump(mode="json")
            if plan.memory is not None:
                data["memory"]["total"] = round(plan.memory.total, 3)
                data["memory"]["allocated"] = round(plan.memory.allocated, 3)
            data["pool_memory_gib"] = pools[pool_name].memory_gib
            data["eta"] = format_duration(plan.total_seconds) if plan.fits else None
            entries[pool_name] = data
        out[name] = entries
    return out


def _batch_words(plan: Plan) -> str:
    if not plan.fits:
        return "-"
    unit = "tok" if plan.global_batch_unit == "tokens" else "samples"
    exact = "" if plan.global_batch_exact else "≈"
    return f"{plan.micro_batch}×{plan.grad_accum}×{plan.world_size} = {exact}{plan.effective_global_batch:,} {unit}"


def _setup_words(plan: Plan) -> str:
    parts = [plan.method]
    if plan.zero_stage:
        parts.append(f"ZeRO-{plan.zero_stage}" + ("+offload" if plan.offload else ""))
    elif plan.distributed != "none":
        parts.append(plan.distributed)
    if plan.gradient_checkpointing:
        parts.append("ckpt")
    return " ".join(parts)


def _print_tables(results, pools, all_pools: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the side-by-side table when piped (rich falls back to 80 columns).
    console = Console(width=None if sys.stdout.isatty() else 180)
    for run_name, plans in results.items():
        if all_pools:
            table = Table(title=f"{run_name}: plan on every pool")
            for column in ("pool", "fits", "setup", "precision", "attention", "micro×accum×world", "GiB / GPU", "step", "ETA", "cost"):
                table.add_column(column)
            for pool_name, plan in plans.items():
                pool = pools[pool_name]
                memory = f"{plan.memory.total:.1f} / {pool.memory_gib:g}" if plan.memory else "-"
                table.add_row(
                    pool_name, "yes" if plan.fits else "[red]no[/red]", _setup_words(plan), plan.precision,
                    plan.attention, _batch_words(plan), memory,
                    format_duration(plan.step_seconds) if plan.fits else "-",
                    format_duration(plan.total_seconds) if plan.fits else "-",
                    f"${plan.cost_usd:,.0f}" if plan.cost_usd is not None else "-",
                )
            console.print(table)
            for pool_name, plan in plans.items():
                if plan.refusal:
                    console.print(f"[red]{pool_name}[/red]: {plan.refusal}")
            continue
        for pool_name, plan in plans.items():
            _print_one(console, run_name, pools[pool_name], plan)


def _print_one(console, run_name: str, pool: Pool, plan: Plan) -> None:
    from rich.table import Table

    table = Table(title=f"{run_name} on {pool.name} ({pool.gpu_product})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [
        ("fits", "yes" if plan.fits else "[red]no[/red]"),
        ("setup", _setup_words(plan)),
        ("weights", "released (model.init pretrained)" if plan.init == "pretrained" else "fresh (model.init scratch)"),
        ("precision", f"{plan.precision}" + (" + TF32" if plan.tf32 else "") + f", weights loaded as {plan.load_dtype}"),
        ("attention", plan.attention),
        ("batch (micro x accum x world)", _batch_words(plan)),
        ("sequence length", str(plan.seq_len)),
        ("parameters (trainable)", f"{plan.total_params / 1e6:,.1f} M ({plan.trainable_params / 1e6:,.2f} M)"),
    ]
    if plan.memory is not None:
        m = plan.memory
        rows.append((
            "memory per GPU (GiB)",
            f"{m.total:.1f} of {pool.memory_gib:g} (planning to {plan.memory_limit_gib:g}): weights {m.weights:.1f}, "
            f"gradients {m.gradients:.1f}, optimizer {m.optimizer:.1f}, activations {m.activations:.1f}, overhead {m.overhead:.1f}",
        ))
    if plan.fits:
        rows += [
            ("step", format_duration(plan.step_seconds)),
            ("ETA", format_duration(plan.total_seconds)),
            ("cost", f"${plan.cost_usd:,.2f}" if plan.cost_usd is not None else "-"),
            ("checkpoint", f"{plan.checkpoint_bytes / 1e9:.2f} GB, ~{plan.checkpoint_save_seconds:.0f} s to save"
             + (" (async)" if plan.async_checkpoint else "") + f"; grace period {plan.grace_period_seconds} s"),
        ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if plan.refusal:
        console.print(f"[red]refused[/red]: {plan.refusal}")
    for note in plan.notes:
        console.print(f"- {note}")
