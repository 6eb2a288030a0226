"""`helixrun status/watch/plot` without a cluster or a clock: the pure views, the PromQL they send, and what
the local reader counts as a checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from helixrun import checkpoint_layout as layout
from helixrun.checkpoint_layout import CheckpointInfo
from helixrun.cli.runs import files, queries, views
from helixrun.metrics_contract import by_name
from helixrun.telemetry.promql import metric_names

NOW = 1_800_000_000.0


def checkpoint(step: int, created: float | None) -> CheckpointInfo:
    manifest = {"step": step, **({"created_unix": created} if created is not None else {})}
    return CheckpointInfo(Path(layout.step_dir_name(step)), step, manifest)


def local_run(records=(), checkpoints=(), modified: float | None = NOW - 1, exported=False, max_steps=100,
              name="esm2") -> views.LocalRun:
    config = {"name": name, "namespace": "bio", "spec": {"training": {"maxSteps": max_steps}}} if name else {}
    return views.LocalRun(folder=Path("/runs/folder"), config=config, records=list(records),
                          checkpoints=list(checkpoints), records_modified=modified, exported=exported)


@pytest.mark.parametrize("run, phase", [
    (local_run(), "Running"),
    (local_run(modified=None), "Pending"),
    (local_run(modified=NOW - 301), "Stopped"),
    (local_run(records=[{"step": 100, "loss": 1.0}]), "Succeeded"),
    (local_run(records=[{"step": 7, "loss": 1.0}], exported=True), "Succeeded"),  # early stop: final/ exported
    (local_run(records=[{"step": 7, "loss": 1.0}], modified=NOW - 10_000, exported=True), "Succeeded"),
])
def test_local_run_phase(run, phase):
    assert views.local_view(run, now=NOW).phase == phase


def test_a_stopped_local_run_says_how_long_it_has_been_silent():
    view = views.local_view(local_run(modified=NOW - 600), now=NOW)
    assert view.message == "no record for 600s" and view.finished


def test_local_view_takes_step_and_loss_from_the_last_record_and_the_checkpoint_from_the_newest():
    records = [{"step": 9, "loss": 2.0, "tokens_per_second": 10.0}, {"step": 10, "loss": 1.5, "tokens_per_second": 12.0}]
    run = local_run(records=records, checkpoints=[checkpoint(5, NOW - 100), checkpoint(10, NOW - 50)])
    view = views.local_view(run, now=NOW)
    assert (view.name, view.namespace, view.step, view.total_steps) == ("esm2", "bio", 10, 100)
    assert (view.loss, view.tokens_per_second) == (1.5, 12.0)
    assert (view.checkpoint_step, view.checkpoint_time) == (10, NOW - 50)
    assert view.eta_seconds == pytest.approx(90 * 10.0), "90 steps left at (50 s / 5 steps) per step"


def test_a_checkpoint_newer_than_the_records_advances_the_step():
    run = local_run(records=[{"step": 3, "loss": 1.0}], checkpoints=[checkpoint(8, NOW)])
    assert views.local_view(run, now=NOW).step == 8


def test_a_run_folder_without_config_is_named_after_the_folder():
    view = views.local_view(local_run(name=None), now=NOW)
    assert (view.name, view.namespace, view.total_steps) == ("folder", "default", None)


@pytest.mark.parametrize("checkpoints", [
    [],
    [checkpoint(10, NOW)],
    [checkpoint(5, None), checkpoint(10, NOW)],
    [checkpoint(10, NOW - 5), checkpoint(10, NOW)],
])
def test_no_eta_without_two_timed_checkpoints_at_different_steps(checkpoints):
    assert views.eta_from_checkpoints(checkpoints, steps_left=50) is None


def test_live_values_win_for_eta_and_throughput_and_only_fill_what_the_status_lacks():
    status = views.RunView(name="r", step=3, loss=9.0, tokens_per_second=1.0)
    live = {"eta_seconds": 60.0, "tokens_per_second": 500.0, "loss": 2.0, "step": 40.0}
    view = views.with_live_values(status, live)
    assert (view.step, view.loss, view.eta_seconds, view.tokens_per_second) == (3, 9.0, 60.0, 500.0)
    assert status.eta_seconds is None, "the status view is left as it was"
    bare = views.with_live_values(views.RunView(name="r"), live)
    assert bare.step == 40 and isinstance(bare.step, int) and bare.loss == 2.0


def test_curves_from_records_skip_eval_only_records_for_the_training_curves():
    records = [{"step": 1, "loss": 3.0, "lr": 1e-4, "tokens_per_second": 100},
               {"step": 2, "loss": "nan?", "lr": 1e-4},
               {"step": 2, "eval_loss": 2.5, "eval_perplexity": 12.2}]
    curves = views.curves_from_records(records)
    assert curves.steps == [1.0, 2.0] and curves.loss[0] == 3.0 and math.isnan(curves.loss[1])
    assert math.isnan(curves.tokens_per_second[1]), "a missing field is a gap, not a zero"
    assert curves.eval == {"loss": ([2.0], [2.5]), "perplexity": ([2.0], [12.2])}


def test_curves_from_series_put_every_series_on_the_step_axis():
    step = {30.0: 3.0, 10.0: 1.0, 20.0: 2.0}
    curves = views.curves_from_series(step=step, loss={10.0: 5.0, 30.0: 4.0}, lr={}, tokens_per_second={20.0: 7.0},
                                      evals={"eval_loss": {30.0: 4.5, 25.0: 9.9}})
    assert curves.steps == [1.0, 2.0, 3.0], "ordered by time"
    assert curves.loss[0] == 5.0 and math.isnan(curves.loss[1]) and curves.loss[2] == 4.0
    assert all(math.isnan(v) for v in curves.lr) and curves.tokens_per_second[1] == 7.0
    assert curves.eval == {"loss": ([3.0], [4.5])}, "a sample between step samples has no step: dropped"


@pytest.mark.parametrize("view, cells", [
    (views.RunView(name="r"), {"STEP": "-/?", "LOSS": "-", "TOKENS/S": "-", "ETA": "-", "LAST CHECKPOINT": "-"}),
    (views.RunView(name="r", step=5, total_steps=9, loss=math.nan, eta_seconds=3 * 3600 + 60, checkpoint_step=4),
     {"STEP": "5/9", "LOSS": "nan", "ETA": "3h01m", "LAST CHECKPOINT": "step 4"}),
])
def test_row_cells(view, cells):
    row = views.row(view, now=NOW)
    assert tuple(row) == views.COLUMNS
    assert {k: row[k] for k in cells} == cells


def test_progress_detail_names_phase_loss_throughput_and_eta():
    view = views.RunView(name="r", phase="Running", loss=1.23456, tokens_per_second=12345.6, eta_seconds=90)
    assert views.progress_detail(view) == "Running  loss 1.2346  12,346 tok/s  ETA 1m30s"


def test_queries_name_only_contract_metrics_and_select_the_run():
    contract = by_name()
    sent = [*queries.live("r", "ns").values(), *queries.curves("r", "ns").values(), queries.evaluations("r", "ns")]
    for promql in sent:
        assert metric_names(promql) <= set(contract), promql
        assert '{run="r", namespace="ns"}' in promql
    assert set(queries.live("r", "ns")) <= set(vars(views.RunView(name="r")))


def test_run_selector_escapes_label_values():
    assert queries.run_selector('a"b', "n\\s") == '{run="a\\"b", namespace="n\\\\s"}'


# -- the local reader ------------------------------------------------------------------------


def commit(root: Path, step: int, created: float) -> Path:
    folder = root / layout.step_dir_name(step)
    folder.mkdir(parents=True)
    text = json.dumps({"format": layout.FORMAT_VERSION, "step": step, "files": {}, "created_unix": created})
    (folder / layout.MANIFEST).write_text(text)
    (folder / layout.COMPLETE).write_text(hashlib.sha256(text.encode()).hexdigest())
    return folder


def test_the_reader_reports_only_checkpoints_whose_manifest_matches_its_checksum(tmp_path):
    root = tmp_path / files.CHECKPOINTS
    commit(root, 5, NOW - 10)
    tampered = commit(root, 10, NOW)
    (tampered / layout.MANIFEST).write_text((tampered / layout.MANIFEST).read_text().replace('"step": 10', '"step": 11'))
    (root / (layout.step_dir_name(15) + ".tmp")).mkdir()  # being written
    run = files.read_local_run(tmp_path)
    assert [c.step for c in run.checkpoints] == [5]
    assert views.local_view(run, now=NOW).checkpoint_step == 5


def test_the_reader_skips_a_half_written_last_record(tmp_path):
    (tmp_path / files.RECORDS).parent.mkdir()
    (tmp_path / files.RECORDS).write_text('{"step": 1, "loss": 2.0}\n{"no step": 1}\n{"step": 2, "lo')
    run = files.read_local_run(tmp_path)
    assert run.records == [{"step": 1, "loss": 2.0}] and run.records_modified is not None and not run.exported
