"""python -m tests.debian fetch | path NAME (see tests/debian/__init__.py)."""

from __future__ import annotations

import argparse
import sys

from tests.debian import ITEMS, Missing, find
from tests.debian.fetch import FetchError, fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.debian")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download and unpack the pinned packages that are missing")
    commands.add_parser("path", help="print where a program or data folder is").add_argument("name", choices=ITEMS)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        else:
            print(find(args.name))
    except (Missing, FetchError) as exc:
        print(f"python -m tests.debian {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
