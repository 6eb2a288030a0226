"""Placeholder planner: recipe defaults, no memory model yet (the planner issue replaces it)."""

from __future__ import annotations

import math

from helixrun.planner.plan import Plan
from helixrun.pools import Pool


def make_plan(spec, pool: Pool) -> Plan:
    world = spec.hardware.nodes * spec.hardware.gpus_per_node
    precision = spec.training.precision
    if precision == "auto":
        precision = "bf16" if pool.bf16 else "fp16"
    seq_len = spec.data.max_sequence_length if spec.data and spec.data.max_sequence_length else 512
    batch = spec.training.global_batch
    if batch and batch.tokens:
        micro_tokens = seq_len
        accum = max(1, math.ceil(batch.tokens / (micro_tokens * world)))
        return Plan(
            fits=True, method=spec.model.method, precision=precision, world_size=world,
            distributed="ddp" if world > 1 else "none", micro_batch=1, micro_batch_tokens=micro_tokens,
            grad_accum=accum, global_batch=batch.tokens, global_batch_unit="tokens",
            global_batch_exact=accum * micro_tokens * world == batch.tokens, seq_len=seq_len,
        )
    samples = batch.samples if batch and batch.samples else world
    accum = max(1, math.ceil(samples / world))
    return Plan(
        fits=True, method=spec.model.method, precision=precision, world_size=world,
        distributed="ddp" if world > 1 else "none", micro_batch=1, grad_accum=accum,
        global_batch=samples, global_batch_exact=accum * world == samples, seq_len=seq_len,
    )
