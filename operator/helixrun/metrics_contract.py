"""The metrics contract: every series the trainer and the operator export.

One list, read by the trainer's exporter and the operator's (they build their
collectors from it), by the dashboard and alert generators, and by the tests
that check every documented metric is exported and every dashboard query
refers only to metrics listed here. docs/METRICS.md is generated from it.
Each trainer series is also a named constant, so code that queries one
(`helixrun status`, `helixrun plot`) names it without spelling it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUN_LABEL, NAMESPACE_LABEL, RANK_LABEL = "run", "namespace", "rank"
RUN_LABELS = (RUN_LABEL, NAMESPACE_LABEL, RANK_LABEL)
EVAL_METRIC_LABEL = "metric"  # helixrun_eval_metric: one series per evaluation metric


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["gauge", "counter", "histogram"]
    unit: str
    help: str
    labels: tuple[str, ...] = RUN_LABELS
    # Exported only where the hardware exists (CUDA); dashboards may show no data on CPU.
    cuda_only: bool = False


TRAIN_STEP = Metric("helixrun_train_step", "gauge", "steps", "Optimizer steps completed.")
TRAIN_TOTAL_STEPS = Metric("helixrun_train_total_steps", "gauge", "steps", "Optimizer steps the run will take.")
TRAIN_LOSS = Metric("helixrun_train_loss", "gauge", "nats", "Training loss of the last optimizer step.")
TRAIN_LEARNING_RATE = Metric("helixrun_train_learning_rate", "gauge", "1", "Learning rate of the last optimizer step.")
TRAIN_GRAD_NORM = Metric("helixrun_train_grad_norm", "gauge", "1", "Gradient norm before clipping, last optimizer step.")
TRAIN_TOKENS_PER_SECOND = Metric("helixrun_train_tokens_per_second", "gauge", "tokens/s", "Training throughput in tokens, this rank.")
TRAIN_SAMPLES_PER_SECOND = Metric("helixrun_train_samples_per_second", "gauge", "samples/s", "Training throughput in samples, this rank.")
TRAIN_TOKENS = Metric("helixrun_train_tokens", "counter", "tokens", "Tokens trained on since the process started.")
TRAIN_STEP_DURATION_SECONDS = Metric("helixrun_train_step_duration_seconds", "histogram", "seconds", "Wall time of one optimizer step.")
TRAIN_ETA_SECONDS = Metric("helixrun_train_eta_seconds", "gauge", "seconds", "Estimated time to the last step.")
TRAIN_RESUMED_FROM_STEP = Metric("helixrun_train_resumed_from_step", "gauge", "steps", "Step of the checkpoint this process resumed from (0: fresh).")
TRAIN_RESTARTS = Metric("helixrun_train_restarts", "counter", "restarts", "Times the run resumed from a checkpoint after a restart.")
TRAIN_INFO = Metric("helixrun_train_info", "gauge", "1", "Constant 1 with the run's recipe, pool, method and precision.", labels=RUN_LABELS + ("recipe", "pool", "method", "precision"))
EVAL_METRIC = Metric("helixrun_eval_metric", "gauge", "1", "Latest evaluation result, one series per metric.", labels=RUN_LABELS + (EVAL_METRIC_LABEL,))
CHECKPOINT_SAVE_DURATION_SECONDS = Metric("helixrun_checkpoint_save_duration_seconds", "histogram", "seconds", "Blocking time of one checkpoint save.")
CHECKPOINT_SIZE_BYTES = Metric("helixrun_checkpoint_size_bytes", "gauge", "bytes", "Size of the last complete checkpoint.")
CHECKPOINT_LAST_STEP = Metric("helixrun_checkpoint_last_step", "gauge", "steps", "Step of the last complete checkpoint.")
CHECKPOINT_LAST_TIMESTAMP_SECONDS = Metric("helixrun_checkpoint_last_timestamp_seconds", "gauge", "seconds", "Unix time the last checkpoint completed.")
GPU_MEMORY_ALLOCATED_BYTES = Metric("helixrun_gpu_memory_allocated_bytes", "gauge", "bytes", "torch.cuda.memory_allocated on this rank.", cuda_only=True)
GPU_MEMORY_PEAK_BYTES = Metric("helixrun_gpu_memory_peak_bytes", "gauge", "bytes", "torch.cuda.max_memory_allocated on this rank.", cuda_only=True)

TRAINER_METRICS: tuple[Metric, ...] = (
    TRAIN_STEP, TRAIN_TOTAL_STEPS, TRAIN_LOSS, TRAIN_LEARNING_RATE, TRAIN_GRAD_NORM, TRAIN_TOKENS_PER_SECOND,
    TRAIN_SAMPLES_PER_SECOND, TRAIN_TOKENS, TRAIN_STEP_DURATION_SECONDS, TRAIN_ETA_SECONDS, TRAIN_RESUMED_FROM_STEP,
    TRAIN_RESTARTS, TRAIN_INFO, EVAL_METRIC, CHECKPOINT_SAVE_DURATION_SECONDS, CHECKPOINT_SIZE_BYTES,
    CHECKPOINT_LAST_STEP, CHECKPOINT_LAST_TIMESTAMP_SECONDS, GPU_MEMORY_ALLOCATED_BYTES, GPU_MEMORY_PEAK_BYTES,
)

OPERATOR_METRICS: tuple[Metric, ...] = (
    Metric("helixrun_operator_runs", "gauge", "runs", "TrainingRuns by phase and pool.", labels=("phase", "pool")),
    Metric("helixrun_operator_gpus_requested", "gauge", "GPUs", "GPUs requested by active runs, by pool.", labels=("pool",)),
    Metric("helixrun_operator_reconcile_duration_seconds", "histogram", "seconds", "Time spent in one handler call.",
           labels=("handler",)),
    Metric("helixrun_operator_reconcile_errors", "counter", "errors", "Handler calls that raised.", labels=("handler",)),
    Metric("helixrun_operator_restarts_observed", "counter", "restarts", "Gang restarts the operator performed or saw.",
           labels=("namespace", "run")),
    Metric("helixrun_operator_plans_refused", "counter", "runs", "Runs whose plan did not fit their pool.", labels=("pool",)),
)


def by_name() -> dict[str, Metric]:
    return {m.name: m for m in TRAINER_METRICS + OPERATOR_METRICS}
