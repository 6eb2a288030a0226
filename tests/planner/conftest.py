"""Shared helpers: build a planner-ready spec (recipe defaults merged, validated) from a few fields."""

from __future__ import annotations

import copy

import pytest

from helixrun import api
from helixrun.pools import default_pools


def make_spec(raw: dict):
    """The spec as resolve() hands it to the planner (the CLI's merge, including dropping LoRA for method full)."""
    from helixrun.cli.plan import merged_spec

    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "t"}, "spec": copy.deepcopy(raw)}
    return merged_spec(api.TrainingRun.from_object(obj))


def run(recipe: str, pool: str, **fields) -> dict:
    raw = {"recipe": recipe, "hardware": {"pool": pool}, "training": {"maxSteps": 1000}}
    for key, value in fields.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.fixture(scope="session")
def pools():
    return default_pools()
