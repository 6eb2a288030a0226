"""The `helixrun` command. Each subcommand lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# Modules are imported lazily so `helixrun render` does not pay for matplotlib or kopf.
SUBCOMMANDS = {
    "render": "helixrun.cli.render",
    "plan": "helixrun.cli.plan",
    "operator": "helixrun.cli.operator",
    "status": "helixrun.cli.runs.commands",
    "watch": "helixrun.cli.runs.commands",
    "plot": "helixrun.cli.runs.commands",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helixrun", description="Train biological foundation models on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('helixrun')}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [a for a in argv if a in SUBCOMMANDS][:1] or list(SUBCOMMANDS)
    for module in dict.fromkeys(SUBCOMMANDS[name] for name in wanted):
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
