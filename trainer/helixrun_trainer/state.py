"""What a checkpoint holds, collected from the components and restored into them.

Rank 0's shared part: the model's trainable state, optimizer, scheduler, grad
scaler, counters (TrainState) and the data position. Every rank's own part: its
RNG streams (python, numpy, torch CPU, every CUDA device). Under FSDP the model
and optimizer are sharded and go through torch.distributed.checkpoint instead.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from helixrun_trainer.data import StepBatches, mix_seed
from helixrun_trainer.errors import ConfigError
from helixrun_trainer.precision import Precision

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters a checkpoint carries besides model/optimizer/scheduler/RNG."""

    step: int = 0
    tokens_seen: int = 0
    samples_seen: int = 0
    last_eval_step: int = 0
    eval_metrics: dict = field(default_factory=dict)
    restarts: int = 0
    # early stopping (helixrun_trainer/early_stopping.py): the metric's best so far, evaluations since it
    best_metric: float | None = None
    evaluations_since_best: int = 0

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            setattr(self, f.name, state.get(f.name, getattr(TrainState(), f.name)))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_deterministic() -> None:
    """Bitwise-repeatable kernels (before CUDA initialises cuBLAS)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


class RunState:
    """The stateful components of one run, as a checkpoint sees them."""

    def __init__(self, *, model, module, optimizer, scheduler, precision: Precision, batches: StepBatches, recipe,
                 train: TrainState, sharded: bool, rank: int, seed: int):
        self.model, self.module, self.optimizer, self.scheduler = model, module, optimizer, scheduler
        self.precision, self.batches, self.recipe, self.train = precision, batches, recipe, train
        self.sharded, self.rank, self.seed = sharded, rank, seed

    def shared(self) -> dict:
        """Rank 0's part (called on rank 0 only)."""
        out = {
            "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "train": asdict(self.train),
            "data": self.batches.state_dict(self.train.step),
        }
        if not self.sharded:
            out["model"] = self.recipe.trainable_state(self.module)
            out["optimizer"] = self.optimizer.state_dict()
        return out

    def part(self) -> dict:
        return {"rng": rng_state(), "rank": self.rank}

    def _dcp_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def save_sharded(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._dcp_state(), checkpoint_id=str(folder))

    def load(self, shared: dict, part: dict | None, folder: Path) -> None:
        if self.sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import set_state_dict

            state = self._dcp_state()
            dcp.load(state, checkpoint_id=str(folder / "dcp"))
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
        else:
            missing, unexpected = self.module.load_state_dict(shared["model"], strict=False)
            trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
            if unexpected or (set(missing) & trainable):
                raise ConfigError(f"checkpoint {folder} does not match the model: missing "
                                  f"{sorted(set(missing) & trainable)[:5]}, unexpected {unexpected[:5]}")
            self.optimizer.load_state_dict(shared["optimizer"])
        self.scheduler.load_state_dict(shared["scheduler"])
        self.precision.load_state_dict(shared["precision"])
        self.train.load_state_dict(shared["train"])
        for problem in self.batches.check_state(shared["data"]):
            log.warning("resume is not exact: %s", problem)
        if part is not None:
            set_rng_state(part["rng"])
        else:
            log.warning("checkpoint %s has no RNG state for rank %d: reseeding", folder, self.rank)
            seed_all(mix_seed(self.seed, "rank", self.rank, "resume", self.train.step))
