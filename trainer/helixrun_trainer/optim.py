"""Optimizer and learning-rate schedules from spec.training.

Schedules are pure functions of the step (lr_at), wrapped in a LambdaLR so the
scheduler's state_dict round-trips through checkpoints. Step s (0-based count of
optimizer steps already taken) uses lr_at(s):
- warmup: linear from warmupStartLr (default 0) to lr over warmupSteps, step 0
  already one step up (so the first update is never zero);
- cosine: from lr down to minLr at the last step;
- linear: from lr down to lr*finalLrFraction at the last step;
- linear-hold: BioNeMo's WarmupAnnealDecayHold, the ESM-2 schedule: warmup from
  0 (step 0 gets 0, step warmupSteps the peak), then linear decay aimed at 0 at
  the last step, held at lr*finalLrFraction once it gets there (with 0.1: after
  90% of the decay);
- constant: lr after warmup.
decaySteps puts the decay's end elsewhere than the last step: a run stopped
early (GeneChat's published run) keeps the curve of the longer schedule.
AdamW decays weights decoupled from the gradient (p <- p*(1 - lr*wd) before the
Adam update), as ESM-2's fairseq Adam and BioNeMo's Megatron Adam do; the API
refuses adam with weight decay, which would be coupled L2.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, *, lr: float, total_steps: int, name: str = "cosine", warmup_steps: int = 0,
          min_lr: float = 0.0, final_lr_fraction: float = 0.0, warmup_start_lr: float = 0.0,
          decay_end: int | None = None) -> float:
    if name == "linear-hold":
        if step < warmup_steps:
            return lr * step / warmup_steps
        decay_steps = max(1, (decay_end or total_steps) - warmup_steps)
        return max(lr * (1.0 - (step - warmup_steps) / decay_steps), lr * final_lr_fraction)
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * (step + 1) / warmup_steps
    if name == "constant":
        return lr
    decay_steps = max(1, (decay_end or total_steps) - warmup_steps - 1)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if name == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "linear":
        final = lr * final_lr_fraction
        return lr + (final - lr) * progress
    raise ValueError(f"unknown schedule {name!r}")


def schedule_kwargs(training, total_steps: int) -> dict:
    """lr_at keyword arguments from a typed spec.training."""
    sched = training.schedule
    return dict(
        lr=training.optimizer.lr if training.optimizer.lr is not None else 1e-4,
        total_steps=total_steps,
        name=(sched.name if sched else None) or "cosine",
        warmup_steps=(sched.warmup_steps if sched else None) or 0,
        min_lr=(sched.min_lr if sched else None) or 0.0,
        final_lr_fraction=(sched.final_lr_fraction if sched and sched.final_lr_fraction is not None else 0.0),
        warmup_start_lr=(sched.warmup_start_lr if sched else None) or 0.0,
        decay_end=(sched.decay_steps if sched else None) or None,
    )


def build_optimizer(params, training) -> torch.optim.Optimizer:
    opt = training.optimizer
    name = opt.name or "adamw"
    kwargs = dict(
        lr=opt.lr if opt.lr is not None else 1e-4,
        betas=tuple(opt.betas) if opt.betas else (0.9, 0.999),
        eps=opt.eps if opt.eps is not None else 1e-8,
        weight_decay=opt.weight_decay if opt.weight_decay is not None else 0.0,
    )
    params = [p for p in params if p.requires_grad]
    # foreach=False: the same kernel sequence on every device and resume (bitwise resume on CPU).
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=False, **kwargs)
    if name == "adam":
        return torch.optim.Adam(params, foreach=False, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, kwargs: dict) -> torch.optim.lr_scheduler.LambdaLR:
    base = kwargs["lr"]
    # LambdaLR multiplies the optimizer's base lr by the factor; lr_at gives absolute values.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, **kwargs) / base if base else 0.0
    )
