"""Metrics, exported once: Prometheus (built from helixrun.metrics_contract), metrics.jsonl,
TensorBoard events, and a log line per logged step (a progress bar in a terminal)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from helixrun.metrics_contract import TRAINER_METRICS, Metric
from helixrun_trainer.files import write_atomically

log = logging.getLogger(__name__)

_KINDS = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
_BUCKETS = {
    "helixrun_train_step_duration_seconds": (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    "helixrun_checkpoint_save_duration_seconds": (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
}


def build_collectors(registry: CollectorRegistry, metrics: tuple[Metric, ...] = TRAINER_METRICS,
                     cuda: bool = False) -> dict:
    """One collector per documented metric (counters appear as <name>_total, as prometheus-client names them)."""
    out = {}
    for m in metrics:
        if m.cuda_only and not cuda:
            continue
        name = m.name[: -len("_total")] if m.name.endswith("_total") else m.name
        kwargs = {"registry": registry, "labelnames": m.labels}
        if m.kind == "histogram":
            kwargs["buckets"] = _BUCKETS.get(m.name, Histogram.DEFAULT_BUCKETS)
        out[m.name] = _KINDS[m.kind](name, f"{m.help} Unit: {m.unit}.", **kwargs)
    return out


class PrometheusExporter:
    def __init__(self, *, run: str, namespace: str, rank: int, port: int | None, cuda: bool = False):
        self.registry = CollectorRegistry()
        self.base = {"run": run, "namespace": namespace, "rank": str(rank)}
        self.c = build_collectors(self.registry, cuda=cuda)
        self.cuda = cuda
        self.port = None
        self.server = None
        if port is not None:
            try:
                self.server, _ = start_http_server(port, registry=self.registry)
            except OSError as exc:  # a second local run on the same port: train on, unscraped
                log.warning("metrics server not started on port %d: %s (use --metrics-port 0)", port, exc)
            else:
                self.port = self.server.server_port
                log.info("metrics on :%d/metrics", self.port)
        # Label sets exist from the start so a scrape finds every series before the first step.
        for name, col in self.c.items():
            if name == "helixrun_train_info":
                continue
            if name == "helixrun_eval_metric":
                continue
            col.labels(**self.base)

    def labels(self, name: str, **extra):
        return self.c[name].labels(**self.base, **extra)

    def info(self, **labels) -> None:
        self.labels("helixrun_train_info", **labels).set(1)

    def set(self, name: str, value: float, **extra) -> None:
        self.labels(name, **extra).set(value)

    def inc(self, name: str, value: float = 1.0) -> None:
        self.labels(name).inc(value)

    def observe(self, name: str, value: float) -> None:
        self.labels(name).observe(value)

    def gpu_memory(self, device: torch.device) -> None:
        if self.cuda and device.type == "cuda":
            self.set("helixrun_gpu_memory_allocated_bytes", torch.cuda.memory_allocated(device))
            self.set("helixrun_gpu_memory_peak_bytes", torch.cuda.max_memory_allocated(device))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class RunRecords:
    """metrics.jsonl + TensorBoard events in the records folder (rank 0 only)."""

    def __init__(self, records: Path, resumed_step: int, enabled: bool):
        self.enabled = enabled
        self.path = records / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        records.mkdir(parents=True, exist_ok=True)
        truncate_after(self.path, resumed_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed process logged past the checkpoint it resumes from.
            self.tb = SummaryWriter(str(records / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)
        except Exception as exc:  # TensorBoard is optional; the JSON log is the record of truth
            log.warning("TensorBoard events disabled: %s", exc)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_after(path: Path, step: int) -> None:
    """Keep the lines up to `step` (the resumed checkpoint); a killed run may have logged past it,
    possibly a half-written last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_atomically(path, lambda staging: staging.write_text("".join(line + "\n" for line in kept)))


class ProgressLog:
    """Plain log lines in a pod; a progress bar when stderr is a terminal, with log lines printed above it."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool):
        self.total, self.enabled = total_steps, enabled
        self.bar = None
        self.t0, self.s0 = time.monotonic(), start_step
        self._redirect = contextlib.ExitStack()
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
                # While the bar is shown, log lines go through tqdm.write: it clears the bar, prints the line and
                # redraws the bar below, instead of the line starting where the bar's text ends. close() undoes it.
                self._redirect.enter_context(logging_redirect_tqdm())
            except ImportError:
                pass

    def eta(self, step: int) -> float:
        done = step - self.s0
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.t0) / done * (self.total - step)

    def update(self, record: dict, logged: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if logged:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            return
        if logged:
            eta = self.eta(record["step"])
            log.info("step %d/%d loss %.4f lr %.3e grad_norm %.3f tokens/s %.0f eta %s", record["step"], self.total,
                     record["loss"], record["lr"], record.get("grad_norm", float("nan")),
                     record.get("tokens_per_second", 0.0), "?" if math.isnan(eta) else f"{eta:.0f}s")

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.enabled:
            log.info("%s", text)

    def close(self) -> None:
        self._redirect.close()
        if self.bar is not None:
            self.bar.close()
