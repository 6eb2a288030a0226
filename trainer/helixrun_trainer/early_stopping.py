"""Early stopping (spec.evaluation.earlyStopping): stop once an evaluation metric has gone `patience`
evaluations in a row without strictly improving on its best, as m2lab-ntu's METAGENE classifier stops on
macro-F1 with patience 3.

The counters live in TrainState, so a checkpoint carries them and a resumed run keeps counting (or stays
stopped). Every rank evaluates the whole eval set and gets the same metrics, so ranks agree without a
collective.
"""

from __future__ import annotations

import math

from helixrun_trainer.state import TrainState


class EarlyStopping:
    def __init__(self, metric: str, mode: str, patience: int):
        self.metric, self.mode, self.patience = metric, mode, patience

    @classmethod
    def from_spec(cls, evaluation) -> "EarlyStopping | None":
        rule = evaluation.early_stopping if evaluation else None
        return cls(rule.metric, rule.mode, rule.patience) if rule else None

    def improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def observe(self, state: TrainState, metrics: dict[str, float]) -> None:
        """Count one evaluation (a run without the metric, e.g. no eval split, never stops)."""
        if self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if self.improves(value, state.best_metric):
            state.best_metric, state.evaluations_since_best = value, 0
        else:
            state.evaluations_since_best += 1

    def stopped(self, state: TrainState) -> bool:
        return state.evaluations_since_best >= self.patience

    def reason(self, state: TrainState) -> str:
        return (f"{self.metric} has not improved on its best {state.best_metric} for {state.evaluations_since_best} "
                f"evaluations (patience {self.patience})")
