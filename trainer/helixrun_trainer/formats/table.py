"""Sequence tables (CSV with a header): rows numbered as a person sees them in the file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from helixrun_trainer.errors import DataError


def sequence_rows(path: Path, column: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV that must have `column`; errors name the file and what is missing."""
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file")
        if column not in reader.fieldnames:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)}); "
                            f"set data.options.sequenceColumn")
        yield from enumerate(reader, 2)  # line 1 is the header
