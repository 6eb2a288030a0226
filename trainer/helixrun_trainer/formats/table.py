"""Sequence tables (CSV with a header): rows numbered as a person sees them in the file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from helixrun_trainer.errors import DataError


def sequence_rows(path: Path, column: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV that must have `column`; errors name the file and what is missing.

    The line number is where the row ends in the file (the reader's count), right also after a quoted field
    that spans lines or a blank line."""
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file")
        if column not in reader.fieldnames:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)}); "
                            f"set data.options.sequenceColumn")
        for row in reader:
            yield reader.line_num, row
