"""The search on its own: every rung of the ladder judged, the fastest that fits chosen, and the plan built from it."""

from __future__ import annotations

from helixrun.planner import make_plan
from helixrun.planner.models import compose
from helixrun.planner.planner import _context, _ladder, search
from tests.planner.conftest import make_spec, run


def searched(spec, pool, method="full"):
    ctx = _context(spec, pool, compose(spec), "bf16")
    return ctx, search(spec, ctx, method)


def test_every_rung_is_judged_and_the_fastest_that_fits_is_chosen(pools):
    """ESM-2 3B full on 8 A800s: DDP and ZeRO-2 fit, with and without checkpointing; DDP is fastest."""
    pool = pools["a800"]
    spec = make_spec(run("esm2-mlm", "a800", model={"name": "facebook/esm2_t36_3B_UR50D"}, hardware={"gpusPerNode": 8}))
    ctx, found = searched(spec, pool)
    ladder = _ladder("full", False, ctx.main.arch.params(ctx.main.head), ctx.world)
    assert [j.setup for j in found.judged] + [s for s, _ in found.skipped] == ladder, "each rung judged or skipped, once"
    assert len(found.fitting) > 1, "a choice among several setups"
    assert found.chosen.step_seconds == min(j.step_seconds for j in found.fitting)
    plan = make_plan(spec, pool)
    chosen = found.chosen.setup
    assert (plan.method, plan.zero_stage, plan.offload, plan.gradient_checkpointing) == (
        chosen.method, chosen.zero_stage, chosen.offload, chosen.checkpointing)


def test_nothing_fits_and_the_refusal_reports_the_smallest_setup(pools):
    """METAGENE-1 7B full on one 24 GB card: no rung fits; the plan reports the rung with the least memory."""
    pool = pools["rtx4090"]
    spec = make_spec(run("metagene-classification", "rtx4090", model={"method": "full"}))
    _, found = searched(spec, pool)
    assert found.chosen is None and not found.fitting
    assert found.smallest.at_one.total == min(j.at_one.total for j in found.judged)
    plan = make_plan(spec, pool)
    assert not plan.fits and plan.memory == found.smallest.at_one
    assert f"~{found.smallest.at_one.total:.1f} GiB per GPU even at micro-batch 1" in plan.refusal
