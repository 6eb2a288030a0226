"""The TrainingRun file `render` and `plan` read, with the `--set path=value` overrides of helixrun-train."""

from __future__ import annotations

from pathlib import Path

from helixrun import api
from helixrun.resolve import apply_sets


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--filename", required=True, help="TrainingRun YAML file")
    parser.add_argument("--pools", help="GPU pools file (default: the built-in pools)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a spec field of every run in the file, as helixrun-train --set (repeatable)")


def read_runs(args) -> list[api.TrainingRun]:
    """The file's runs with the overrides applied; resolve them with overrides=args.set so they beat smoke budgets."""
    path = Path(args.filename)
    return [api.TrainingRun.from_object(apply_sets(doc, args.set), where)
            for doc, where in api.documents(path.read_text(), str(path))]
