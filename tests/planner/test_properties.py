"""Properties over many runs and pools (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helixrun.planner import make_plan
from helixrun.pools import default_pools
from tests.planner.conftest import make_spec, run

POOLS = default_pools()
CASES = [
    ("esm2-mlm", {"model": {"name": "facebook/esm2_t6_8M_UR50D"}}),
    ("esm2-mlm", {"model": {"name": "facebook/esm2_t30_150M_UR50D"}}),
    ("esm2-mlm", {}),
    ("metagene-classification", {}),
    ("metagene-classification", {"model": {"method": "full"}}),
    ("structdiff", {}),
    ("ptm-mamba", {}),
    ("genechat", {}),
]

runs = st.builds(
    lambda case, pool, seq, tokens, samples, use_tokens, gpus: (case, pool, seq, tokens if use_tokens else None, samples, gpus),
    st.sampled_from(CASES),
    st.sampled_from(sorted(POOLS)),
    st.integers(32, 1024),
    st.integers(1_000, 4_000_000),
    st.integers(1, 512),
    st.booleans(),
    st.integers(1, 2),
)


def spec_of(case, pool, seq, tokens, samples, gpus):
    recipe, extra = case
    batch = {"tokens": tokens} if tokens else {"samples": samples}
    raw = run(recipe, pool, data={"maxSequenceLength": seq}, training={"globalBatch": batch},
              hardware={"gpusPerNode": min(gpus, POOLS[pool].gpus_per_node)}, **extra)
    return make_spec(raw)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(runs)
def test_accumulation_covers_the_global_batch(r):
    spec = spec_of(*r)
    plan = make_plan(spec, POOLS[spec.hardware.pool])
    if not plan.fits:
        return
    per_micro = plan.micro_batch * plan.world_size * (plan.seq_len if plan.global_batch_unit == "tokens" else 1)
    covered = plan.grad_accum * per_micro
    assert covered == plan.effective_global_batch
    assert covered >= plan.global_batch, "accumulation falls short of the global batch"
    assert covered - plan.global_batch < per_micro, "more than one extra micro-batch round"
    assert plan.global_batch_exact == (covered == plan.global_batch)
    assert plan.global_batch_exact or any("global batch" in n for n in plan.notes), "an inexact batch is explained"


@SETTINGS
@given(runs, st.integers(32, 1024))
def test_micro_batch_does_not_grow_with_sequence_length(r, other_seq):
    case, pool, seq, _, _, gpus = r
    short, long_ = sorted((seq, other_seq))
    # 2**20 samples per rank: every power of two divides it, so the chosen micro-batch is the largest
    # power of two that fits, and only memory (not the budget's arithmetic) decides it.
    samples = 2**20 * min(gpus, POOLS[pool].gpus_per_node)
    a = make_plan(spec_of(case, pool, short, None, samples, gpus), POOLS[pool])
    b = make_plan(spec_of(case, pool, long_, None, samples, gpus), POOLS[pool])
    if b.fits:
        assert a.fits, "a shorter sequence refused where a longer one fits"
        if (a.method, a.zero_stage, a.offload, a.gradient_checkpointing) == (b.method, b.zero_stage, b.offload, b.gradient_checkpointing):
            assert a.micro_batch >= b.micro_batch


@SETTINGS
@given(runs, st.floats(1.0, 4.0))
def test_more_memory_never_makes_a_fitting_run_refuse(r, factor):
    spec = spec_of(*r)
    pool = POOLS[spec.hardware.pool]
    bigger = pool.model_copy(update={"memory_gib": pool.memory_gib * factor})
    small, large = make_plan(spec, pool), make_plan(spec, bigger)
    if small.fits:
        assert large.fits
        assert large.memory.total <= bigger.memory_gib
    assert (small.memory is None) or (not small.fits) or small.memory.total <= small.memory_limit_gib


@SETTINGS
@given(runs)
def test_plan_is_deterministic_and_serialisable(r):
    spec = spec_of(*r)
    a, b = make_plan(spec, POOLS[spec.hardware.pool]), make_plan(spec, POOLS[spec.hardware.pool])
    assert a == b
    assert type(a).model_validate_json(a.model_dump_json()) == a
    if a.fits:
        assert a.grace_period_seconds >= 60 and math.isfinite(a.step_seconds) and a.step_seconds > 0
    else:
        assert a.refusal and "GiB" in a.refusal
