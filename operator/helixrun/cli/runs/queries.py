"""The PromQL `helixrun status` and `helixrun plot` send about one run, built from the metrics contract."""

from __future__ import annotations

import json

from helixrun import metrics_contract as contract


def run_selector(name: str, namespace: str) -> str:
    # A JSON string literal is a valid PromQL one: the label values are quoted and escaped alike.
    return f"{{{contract.RUN_LABEL}={json.dumps(name)}, {contract.NAMESPACE_LABEL}={json.dumps(namespace)}}}"


def live(name: str, namespace: str) -> dict[str, str]:
    """Instant queries for the run's latest values, keyed by the RunView field each fills."""
    sel = run_selector(name, namespace)
    return {
        "eta_seconds": f"max({contract.TRAIN_ETA_SECONDS.name}{sel})",
        "tokens_per_second": f"sum({contract.TRAIN_TOKENS_PER_SECOND.name}{sel})",  # every rank's share
        "loss": f"avg({contract.TRAIN_LOSS.name}{sel})",
        "step": f"max({contract.TRAIN_STEP.name}{sel})",
    }


def curves(name: str, namespace: str) -> dict[str, str]:
    """Range queries for the training curves, keyed by the Curves field each fills."""
    sel = run_selector(name, namespace)
    return {
        "step": f"max({contract.TRAIN_STEP.name}{sel})",
        "loss": f"avg({contract.TRAIN_LOSS.name}{sel})",
        "lr": f"max({contract.TRAIN_LEARNING_RATE.name}{sel})",
        "tokens_per_second": f"sum({contract.TRAIN_TOKENS_PER_SECOND.name}{sel})",
    }


def evaluations(name: str, namespace: str) -> str:
    """A range query with one series per evaluation metric, labelled by the metric's name."""
    return f"max by ({contract.EVAL_METRIC_LABEL}) ({contract.EVAL_METRIC.name}{run_selector(name, namespace)})"
