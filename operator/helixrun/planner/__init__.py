"""The hardware planner: (run spec, pool) -> Plan, pure and deterministic."""

from helixrun.planner.plan import MemoryEstimate, Plan
from helixrun.planner.planner import make_plan

__all__ = ["MemoryEstimate", "Plan", "make_plan"]
