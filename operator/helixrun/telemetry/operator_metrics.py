"""The operator's Prometheus metrics, served from kopf's own event loop.

Collectors are built from OPERATOR_METRICS into a private registry. The HTTP
server is an aiohttp site started inside the running loop, so a blocked loop
shows up as a failed scrape (`up == 0`) rather than as stale, healthy numbers.

Wiring (helixrun/controller/handlers.py)::

    from helixrun.telemetry import operator_metrics

    @kopf.on.startup()
    async def start_metrics(memo, **_):
        # HELIXRUN_OPERATOR_METRICS_PORT (the chart sets it), default 9090
        memo.metrics_server = await operator_metrics.start_operator_metrics()

    @kopf.on.cleanup()
    async def stop_metrics(memo, **_):
        await memo.metrics_server.stop()

    @kopf.on.event(*RUNS)          # level-triggered: the initial listing rebuilds the gauges
    def run_metrics(type, name, namespace, spec, status, **_):
        if type == "DELETED":
            operator_metrics.run_gone(namespace, name)
            return
        hardware = spec.get("hardware", {})
        gpus = status.get("gpus") or hardware.get("nodes", 1) * hardware.get("gpusPerNode", 1)
        operator_metrics.run_seen(namespace, name, status.get("phase") or "Pending",
                                  hardware.get("pool", "unknown"), gpus)

and in the handlers: `@operator_metrics.instrumented("reconcile", ignore=(kopf.TemporaryError,))`
under each `@kopf.on.*`, `operator_metrics.plan_refused(pool)` where a plan is
refused, `operator_metrics.restart_observed(namespace, run)` where a gang restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from helixrun.metrics_contract import OPERATOR_METRICS, Metric

# The chart sets HELIXRUN_OPERATOR_METRICS_PORT from operator.metrics.port.
DEFAULT_PORT = 9090
PORT_ENV = "HELIXRUN_OPERATOR_METRICS_PORT"
# The phases of status.phase (CRD enum); every (phase, pool) pair is exported, zeros included,
# so "runs by phase" panels show 0 rather than no data.
PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
ACTIVE_PHASES = frozenset({"Pending", "Running", "Restarting"})

# Operator handlers are short; buckets from 5 ms to 2 min.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _collector(metric: Metric, registry: CollectorRegistry):
    # prometheus-client appends _total to counters itself; the contract names the base.
    unit_free = dict(name=metric.name, documentation=metric.help, labelnames=metric.labels, registry=registry)
    if metric.kind == "gauge":
        return Gauge(**unit_free)
    if metric.kind == "counter":
        return Counter(**unit_free)
    if metric.kind == "histogram":
        return Histogram(**unit_free, buckets=RECONCILE_BUCKETS)
    raise ValueError(f"unknown metric kind {metric.kind!r} for {metric.name}")


class OperatorMetrics:
    """The operator's collectors, one per OPERATOR_METRICS entry, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.collectors = {m.name: _collector(m, self.registry) for m in OPERATOR_METRICS}
        self._runs: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._pools: set[str] = set()
        self._lock = threading.Lock()

    def __getitem__(self, name: str):
        return self.collectors[name]

    # -- reconcile ----------------------------------------------------------

    @contextlib.contextmanager
    def observe_reconcile(self, handler: str, ignore: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Time one handler call; count it as an error if it raises (except the `ignore` types)."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, ignore) and not isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                self["helixrun_operator_reconcile_errors"].labels(handler=handler).inc()
            raise
        finally:
            self["helixrun_operator_reconcile_duration_seconds"].labels(handler=handler).observe(
                time.perf_counter() - started
            )

    def instrumented(self, handler: str, ignore: tuple[type[BaseException], ...] = ()):
        """Decorator form of observe_reconcile, for sync or async kopf handlers (put it under @kopf.on.*)."""

        def wrap(fn):
            if asyncio.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def call_async(*args, **kwargs):
                    with self.observe_reconcile(handler, ignore):
                        return await fn(*args, **kwargs)

                return call_async

            @functools.wraps(fn)
            def call(*args, **kwargs):
                with self.observe_reconcile(handler, ignore):
                    return fn(*args, **kwargs)

            return call

        return wrap

    # -- runs by phase and pool --------------------------------------------

    def set_runs_by_phase(self, counts: Mapping[tuple[str, str], int], gpus: Mapping[str, int] | None = None) -> None:
        """Replace the runs gauge with `{(phase, pool): count}` and, if given, GPUs requested `{pool: gpus}`."""
        with self._lock:
            pools = self._pools | {pool for _, pool in counts} | set(gpus or {})
            self._pools = pools
            runs = self["helixrun_operator_runs"]
            for pool in pools:
                for phase in PHASES:
                    runs.labels(phase=phase, pool=pool).set(counts.get((phase, pool), 0))
            if gpus is not None:
                for pool in pools:
                    self["helixrun_operator_gpus_requested"].labels(pool=pool).set(gpus.get(pool, 0))

    def run_seen(self, namespace: str, name: str, phase: str, pool: str, gpus: int = 0) -> None:
        """Record a run's current phase, pool and GPU count (call on every status change)."""
        with self._lock:
            known = (namespace, name) in self._runs
            self._runs[(namespace, name)] = (phase, pool, int(gpus))
        if not known:
            # The restart counter starts at 0 when the run appears, so increase() sees its first restart.
            self["helixrun_operator_restarts_observed"].labels(namespace=namespace, run=name)
        self._recount()

    def run_gone(self, namespace: str, name: str) -> None:
        """Forget a deleted run."""
        with self._lock:
            known = self._runs.pop((namespace, name), None) is not None
        if known:
            with contextlib.suppress(KeyError):  # a deleted run's series go away with it
                self["helixrun_operator_restarts_observed"].remove(namespace, name)
        self._recount()

    def _recount(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        counts: dict[tuple[str, str], int] = {}
        gpus: dict[str, int] = {}
        for phase, pool, n in runs:
            counts[(phase, pool)] = counts.get((phase, pool), 0) + 1
            if phase in ACTIVE_PHASES:
                gpus[pool] = gpus.get(pool, 0) + n
        self.set_runs_by_phase(counts, gpus)

    # -- events -------------------------------------------------------------

    def restart_observed(self, namespace: str, run: str) -> None:
        self["helixrun_operator_restarts_observed"].labels(namespace=namespace, run=run).inc()

    def plan_refused(self, pool: str) -> None:
        self["helixrun_operator_plans_refused"].labels(pool=pool).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = OperatorMetrics()

# The module-level API the handlers call.
observe_reconcile = METRICS.observe_reconcile
instrumented = METRICS.instrumented
set_runs_by_phase = METRICS.set_runs_by_phase
run_seen = METRICS.run_seen
run_gone = METRICS.run_gone
restart_observed = METRICS.restart_observed
plan_refused = METRICS.plan_refused


# -- HTTP ---------------------------------------------------------------------


@dataclass
class MetricsServer:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


def _app(metrics: OperatorMetrics) -> web.Application:
    async def scrape(_request: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app


def configured_port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


async def start_operator_metrics(
    port: int | None = None, host: str = "0.0.0.0", metrics: OperatorMetrics | None = None
) -> MetricsServer:
    """Start serving /metrics in the running event loop (kopf's); returns once the socket listens.

    `port=None` reads HELIXRUN_OPERATOR_METRICS_PORT (default 9090); 0 picks a free port.
    """
    port = configured_port() if port is None else port
    runner = web.AppRunner(_app(metrics or METRICS), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for sock in (site._server.sockets if site._server else []):  # port 0: report the one the OS chose
        bound = sock.getsockname()[1]
        break
    return MetricsServer(runner=runner, port=bound)


async def serve_operator_metrics(port: int | None = None, host: str = "0.0.0.0") -> None:
    """Serve /metrics until cancelled (for a task of its own or a standalone process)."""
    server = await start_operator_metrics(port, host)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
