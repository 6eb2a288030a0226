"""The Grafana dashboards, built as code with grafana-foundation-sdk.

Panels are data (title, kind, unit, queries); `build_run()`/`build_fleet()`
turn them into dashboards with the SDK's builders. The generated JSON is
committed under charts/helixrun/dashboards/ and shipped in a ConfigMap for the
Grafana sidecar; `python -m helixrun.telemetry.dashboards` rewrites it and a
test fails when the committed files differ from the generated ones.

Queries use Grafana's `$datasource`, `$namespace`, `$run`, `$pool`,
`$__rate_interval` and `$__range`; every metric they name is in
helixrun.metrics_contract or is a DCGM exporter series (telemetry.dcgm).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

from helixrun.telemetry import dcgm

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "helixrun"
DASHBOARD_DIR = "dashboards"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

RUN = '{namespace=~"$namespace", run=~"$run"}'
ACTIVE = '"Pending|Running|Restarting"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: Literal["timeseries", "stat"]
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12
    height: int = 8
    show_name: bool = False  # stat panels: print the legend (series name) beside the value


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _stat(title: str, unit: str, expr: str, legend: str = "{{run}}", description: str = "",
          show_name: bool = False) -> Panel:
    return Panel(title, "stat", unit, (_q(expr, legend),), description, width=4, height=4, show_name=show_name)


# -- the run dashboard --------------------------------------------------------

STEP_HIST = f"helixrun_train_step_duration_seconds_bucket{RUN}[$__rate_interval]"

RUN_ROWS: tuple[Row, ...] = (
    Row(
        "Progress",
        (
            _stat("Step", "none", f"max by (run) (helixrun_train_step{RUN})"),
            _stat(
                "Progress",
                "percentunit",
                f"max by (run) (helixrun_train_step{RUN}) / max by (run) (helixrun_train_total_steps{RUN})",
            ),
            _stat("ETA", "s", f"max by (run) (helixrun_train_eta_seconds{RUN})", description="Trainer's estimate."),
            _stat(
                "Last checkpoint age",
                "s",
                f"time() - max by (run) (helixrun_checkpoint_last_timestamp_seconds{RUN} > 0)",
            ),
            _stat("Restarts", "none", f"max by (run) (helixrun_train_restarts_total{RUN})",
                  description="Times the run resumed from a checkpoint after a restart."),
            _stat(
                "Run",
                "none",
                f"max by (run, recipe, pool, method, precision) (helixrun_train_info{RUN})",
                legend="{{recipe}} on {{pool}}: {{method}}, {{precision}}",
                show_name=True,
            ),
        ),
    ),
    Row(
        "Training",
        (
            Panel("Training loss", "timeseries", "none",
                  (_q(f"avg by (run) (helixrun_train_loss{RUN})", "{{run}} (mean over ranks)"),),
                  "Loss of the last optimizer step, in nats."),
            Panel("Evaluation metrics", "timeseries", "none",
                  (_q(f"max by (run, metric) (helixrun_eval_metric{RUN})", "{{run}} {{metric}}"),)),
            Panel("Learning rate", "timeseries", "none",
                  (_q(f"max by (run) (helixrun_train_learning_rate{RUN})", "{{run}}"),)),
            Panel("Gradient norm", "timeseries", "none",
                  (_q(f"max by (run) (helixrun_train_grad_norm{RUN})", "{{run}} (max over ranks)"),),
                  "Before clipping."),
            Panel("Throughput", "timeseries", "short",
                  (_q(f"sum by (run) (helixrun_train_tokens_per_second{RUN})", "{{run}} tokens/s"),
                   _q(f"sum by (run) (helixrun_train_samples_per_second{RUN})", "{{run}} samples/s"),
                   _q(f"sum by (run) (rate(helixrun_train_tokens_total{RUN}[$__rate_interval]))",
                      "{{run}} tokens/s (from counter)")),
                  "Summed over ranks."),
            Panel("Step time", "timeseries", "s",
                  (_q(f"histogram_quantile(0.5, sum by (le, run) (rate({STEP_HIST})))", "{{run}} p50"),
                   _q(f"histogram_quantile(0.95, sum by (le, run) (rate({STEP_HIST})))", "{{run}} p95"),
                   _q(f"max by (run) (helixrun_train_step_duration_seconds_sum{RUN}"
                      f" / helixrun_train_step_duration_seconds_count{RUN})", "{{run}} mean since start")),
                  "Wall time of one optimizer step."),
        ),
    ),
    Row(
        "Checkpoints",
        (
            Panel("Checkpoint age", "timeseries", "s",
                  (_q(f"time() - max by (run) (helixrun_checkpoint_last_timestamp_seconds{RUN} > 0)", "{{run}}"),),
                  "Seconds since the last complete checkpoint.", width=8),
            Panel("Checkpoint save time", "timeseries", "s",
                  (_q(f"max by (run) (helixrun_checkpoint_save_duration_seconds_sum{RUN}"
                      f" / helixrun_checkpoint_save_duration_seconds_count{RUN})", "{{run}} mean since start"),
                   _q(f"max by (run) (helixrun_checkpoint_save_duration_seconds_count{RUN})", "{{run}} saves")),
                  "Blocking time of a checkpoint save.", width=8),
            Panel("Checkpoint size and step", "timeseries", "bytes",
                  (_q(f"max by (run) (helixrun_checkpoint_size_bytes{RUN})", "{{run}} size"),
                   _q(f"max by (run) (helixrun_checkpoint_last_step{RUN})", "{{run}} step")),
                  width=8),
        ),
    ),
    Row(
        "GPUs",
        (
            Panel("GPU memory (torch)", "timeseries", "bytes",
                  (_q(f"max by (run, rank) (helixrun_gpu_memory_allocated_bytes{RUN})", "rank {{rank}} allocated"),
                   _q(f"max by (run, rank) (helixrun_gpu_memory_peak_bytes{RUN})", "rank {{rank}} peak")),
                  "CUDA only.", width=8),
            Panel("GPU utilisation (DCGM)", "timeseries", "percent",
                  (_q(dcgm.for_run(dcgm.GPU_UTIL, RUN), "{{pod}} GPU {{gpu}}"),),
                  "From dcgm-exporter, where installed.", width=8),
            Panel("GPU framebuffer used (DCGM)", "timeseries", "decmbytes",
                  (_q(dcgm.for_run(dcgm.FB_USED, RUN), "{{pod}} GPU {{gpu}}"),),
                  "From dcgm-exporter, where installed.", width=8),
        ),
    ),
    Row(
        "Restarts",
        (
            Panel("Restarts", "timeseries", "none",
                  (_q(f"max by (run) (helixrun_train_restarts_total{RUN})", "{{run}} seen by the trainer"),
                   _q(f"sum by (run) (helixrun_operator_restarts_observed_total{RUN})", "{{run}} seen by the operator")),
                  width=12),
            Panel("Resumed from step", "timeseries", "none",
                  (_q(f"max by (run) (helixrun_train_resumed_from_step{RUN})", "{{run}}"),),
                  "0 for a fresh start.", width=12),
        ),
    ),
)

# -- the fleet dashboard ------------------------------------------------------

POOL = '{pool=~"$pool"}'

FLEET_ROWS: tuple[Row, ...] = (
    Row(
        "Fleet",
        (
            _stat("Active runs", "none", f'sum(helixrun_operator_runs{{phase=~{ACTIVE}, pool=~"$pool"}})', legend=""),
            _stat("GPUs requested", "none", f"sum(helixrun_operator_gpus_requested{POOL})", legend=""),
            _stat("Failed runs", "none", 'sum(helixrun_operator_runs{phase="Failed", pool=~"$pool"})', legend=""),
            _stat("Plans refused", "none",
                  f"sum(increase(helixrun_operator_plans_refused_total{POOL}[$__range]))", legend=""),
        ),
    ),
    Row(
        "Runs",
        (
            Panel("Runs by phase", "timeseries", "none",
                  (_q(f"sum by (phase) (helixrun_operator_runs{POOL})", "{{phase}}"),)),
            Panel("Runs by pool and phase", "timeseries", "none",
                  (_q(f"sum by (pool, phase) (helixrun_operator_runs{POOL})", "{{pool}} {{phase}}"),)),
            Panel("GPUs in use per pool", "timeseries", "none",
                  (_q(f"sum by (pool) (helixrun_operator_gpus_requested{POOL})", "{{pool}} requested"),
                   _q(f"count by (pool) ({dcgm.for_run(dcgm.GPU_UTIL, POOL, by='pool')})", "{{pool}} busy (DCGM)")),
                  "Requested by active runs; GPUs with a trainer pod where dcgm-exporter runs."),
            Panel("Throughput per pool", "timeseries", "short",
                  (_q("sum by (pool) (helixrun_train_tokens_per_second * on (namespace, run) group_left (pool)"
                      f" max by (namespace, run, pool) (helixrun_train_info{POOL}))", "{{pool}} tokens/s"),)),
        ),
    ),
    Row(
        "Failures",
        (
            Panel("Failed runs by pool", "timeseries", "none",
                  (_q('sum by (pool) (helixrun_operator_runs{phase="Failed", pool=~"$pool"})', "{{pool}}"),),
                  width=8),
            Panel("Restarts observed", "timeseries", "none",
                  (_q("sum by (namespace, run) (increase(helixrun_operator_restarts_observed_total[$__range]))",
                      "{{namespace}}/{{run}}"),),
                  "Gang restarts in the selected time range.", width=8),
            Panel("Plans refused", "timeseries", "none",
                  (_q(f"sum by (pool) (increase(helixrun_operator_plans_refused_total{POOL}[$__range]))", "{{pool}}"),),
                  "Runs whose plan did not fit their pool.", width=8),
        ),
    ),
    Row(
        "Operator",
        (
            Panel("Reconcile errors", "timeseries", "ops",
                  (_q("sum by (handler) (rate(helixrun_operator_reconcile_errors_total[$__rate_interval]))",
                      "{{handler}}"),)),
            Panel("Reconcile duration", "timeseries", "s",
                  (_q("histogram_quantile(0.95, sum by (le, handler) "
                      "(rate(helixrun_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "{{handler}} p95"),
                   _q("sum by (handler) (helixrun_operator_reconcile_duration_seconds_sum)"
                      " / sum by (handler) (helixrun_operator_reconcile_duration_seconds_count)", "{{handler}} mean")),
                  "Time in one handler call."),
        ),
    ),
)


# -- building -----------------------------------------------------------------


def _datasource_variable() -> dash_b.DatasourceVariable:
    return dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _query_variable(name: str, label: str, query: str, include_all: bool = False) -> dash_b.QueryVariable:
    var = (
        dash_b.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
    )
    if include_all:
        var = var.include_all(True).all_value(".*").multi(True)
    return var


def _panel(panel: Panel):
    if panel.kind == "stat":
        builder = (
            stat_b.Panel()
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common_m.BigValueGraphMode.NONE)
            .text_mode(common_m.BigValueTextMode.NAME if panel.show_name else common_m.BigValueTextMode.AUTO)
        )
    else:
        builder = ts_b.Panel().legend(
            common_b.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.LIST)
            .placement(common_m.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    builder = builder.title(panel.title).unit(panel.unit).datasource(DATASOURCE).span(panel.width).height(panel.height)
    if panel.description:
        builder = builder.description(panel.description)
    for i, query in enumerate(panel.queries):
        target = prom_b.Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def _dashboard(uid: str, title: str, description: str, rows: tuple[Row, ...], variables: list) -> dict:
    board = (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["helixrun"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .timezone("browser")
        .variables(variables)
    )
    for row in rows:
        board = board.with_row(dash_b.Row(row.title))
        for panel in row.panels:
            board = board.with_panel(_panel(panel))
    built = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    # Stable panel ids, in layout order.
    for i, panel in enumerate(built.get("panels", []), start=1):
        panel["id"] = i
    return built


def build_run() -> dict:
    return _dashboard(
        "helixrun-run",
        "helixrun / Training run",
        "One TrainingRun: progress, loss, evaluation, learning rate, throughput, step time, checkpoints, GPUs, restarts.",
        RUN_ROWS,
        [
            _datasource_variable(),
            _query_variable("namespace", "Namespace", "label_values(helixrun_train_info, namespace)"),
            _query_variable("run", "Run", 'label_values(helixrun_train_info{namespace=~"$namespace"}, run)'),
        ],
    )


def build_fleet() -> dict:
    return _dashboard(
        "helixrun-fleet",
        "helixrun / Fleet",
        "All TrainingRuns: runs by phase and pool, GPUs in use per pool, failures, operator health.",
        FLEET_ROWS,
        [
            _datasource_variable(),
            _query_variable("pool", "Pool", "label_values(helixrun_operator_runs, pool)", include_all=True),
        ],
    )


DASHBOARDS = {"helixrun-run.json": build_run, "helixrun-fleet.json": build_fleet}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel of a dashboard JSON."""
    out = []
    for panel in board.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []) or []:
                if target.get("expr"):
                    out.append((sub.get("title", ""), target["expr"]))
    return out


def write(chart_dir: Path = CHART_DIR) -> list[Path]:
    out = chart_dir / DASHBOARD_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, build in DASHBOARDS.items():
        path = out / filename
        path.write_text(render(build))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else CHART_DIR):
        print(path)
