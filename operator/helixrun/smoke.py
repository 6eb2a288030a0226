"""Smoke runs (spec.smokeTest): the recipe's tiny configuration, from a TrainingRun, on any pool.

A smoke run keeps what it is meant to test (recipe, method, hardware, image) and
replaces what would make it long or need outside inputs: the trainer builds
toy-sized random-initialised versions of the recipe's models and generates its
data from the seed; the planner plans those models (planner/models.py `tiny`);
the budget below caps the run's own. `helixrun-train --local --tiny` is a
smoke run too, on one local process with a shorter budget of its own.
"""

from __future__ import annotations

import copy

from helixrun import recipes

# Caps: a run asking for less (a shorter smoke test, more frequent checkpoints) keeps its own.
MAX_STEPS = 200
CHECKPOINT_EVERY = 20
EVALUATION_EVERY = 50
SEQUENCE_LENGTH = 64
WARMUP_STEPS = 4
MICRO_BATCHES = 4  # global batch: 4 samples, or 4 sequences' worth of tokens

# Where a smoke run in a pod generates its data: /data is mounted only from a data claim, and the root
# filesystem is read-only. Each pod generates the same bytes from the seed, so nothing is shared.
POD_DATA = "/tmp/smoke-data"


def _capped(merged: dict, section: str, field: str, cap: int) -> int:
    return min((merged.get(section) or {}).get(field) or cap, cap)


def smoke_spec(spec: dict) -> dict:
    """The spec a smoke run trains: the run's own with the smoke budget over it (spec as written, not merged)."""
    merged = recipes.with_defaults(spec)
    out = copy.deepcopy(spec)
    out["smokeTest"] = True
    seq = _capped(merged, "data", "maxSequenceLength", SEQUENCE_LENGTH)
    out.setdefault("data", {})["maxSequenceLength"] = seq
    training = out.setdefault("training", {})
    training.pop("epochs", None)  # an epoch of the real data set means nothing for generated data
    training.update(maxSteps=_capped(merged, "training", "maxSteps", MAX_STEPS), logEverySteps=1, precision="auto")
    training.setdefault("schedule", {})["warmupSteps"] = WARMUP_STEPS
    unit = "tokens" if (merged["training"].get("globalBatch") or {}).get("tokens") else "samples"
    training["globalBatch"] = {unit: MICRO_BATCHES * seq if unit == "tokens" else MICRO_BATCHES}
    out.setdefault("checkpointing", {})["everySteps"] = _capped(merged, "checkpointing", "everySteps", CHECKPOINT_EVERY)
    out.setdefault("evaluation", {})["everySteps"] = _capped(merged, "evaluation", "everySteps", EVALUATION_EVERY)
    return recipes.merge(out, recipes.SMOKE.get(spec["recipe"], {}))
