"""The status table and `helixrun watch`'s progress bar, drawn with rich."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from helixrun.cli.runs.views import COLUMNS, NUMERIC_COLUMNS, RunView, progress_detail, row


def status_table(views: list[RunView], now: float) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC_COLUMNS else "left")
    for view in views:
        table.add_row(*row(view, now).values())
    return table


class ProgressBar:
    """One run's step of total with its phase, loss, throughput and ETA beside the bar."""

    def __init__(self, console, description: str):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), console=console, auto_refresh=False)
        self.task = self.progress.add_task(description, total=None, detail="")

    def show(self, view: RunView) -> None:
        self.progress.update(self.task, description=f"{view.namespace}/{view.name}", total=view.total_steps,
                             completed=view.step or 0, detail=progress_detail(view))

    def renderable(self):
        return self.progress.get_renderable()
