"""Resolve a TrainingRun into the one config the trainer reads.

run (validated) [+ the smoke budget] + recipe defaults + pool + plan -> ResolvedRun.
The operator stores it in the run's ConfigMap; `helixrun-train --local` builds it
the same way from an example file, so a local run and a pod train from identical
input.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict

from helixrun import api, recipes, smoke
from helixrun.planner import Plan, make_plan
from helixrun.pools import Pool


class Paths(BaseModel):
    model_config = ConfigDict(frozen=True)

    checkpoints: str
    data: str
    model_cache: str
    records: str  # metrics.jsonl, TensorBoard events, split mappings: beside the checkpoints


# Where the operator mounts things in a trainer pod.
CONFIG_DIR = "/etc/helixrun"
CONFIG_FILE = "config.yaml"
POD_PATHS = Paths(checkpoints="/checkpoints", data="/data", model_cache="/cache", records="/checkpoints/records")


def local_paths(workdir: str | Path) -> Paths:
    workdir = Path(workdir).resolve()
    return Paths(
        checkpoints=str(workdir / "checkpoints"),
        data=str(workdir / "data"),
        model_cache=str(workdir / "cache"),
        records=str(workdir / "records"),
    )


class ResolvedRun(BaseModel):
    """The fully resolved run configuration (the ConfigMap's config.yaml)."""

    model_config = ConfigDict(frozen=True)

    api_version: Literal["helixrun.io/v1alpha1"] = "helixrun.io/v1alpha1"
    kind: Literal["ResolvedRun"] = "ResolvedRun"
    name: str
    namespace: str
    uid: str = ""
    labels: dict[str, str] = {}
    spec: dict[str, Any]
    pool: Pool
    plan: Plan
    paths: Paths

    @property
    def typed_spec(self):
        return api.RunSpec.model_validate(self.spec)

    @property
    def smoke_test(self) -> bool:
        """Train the recipe's tiny models on generated data (spec.smokeTest)."""
        return bool(self.spec.get("smokeTest"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ResolvedRun":
        return cls.model_validate(yaml.safe_load(text))


def check_pool(run: api.TrainingRun, pools: dict[str, Pool], source: str = "") -> Pool:
    hardware = run.spec.hardware
    pool = pools.get(hardware.pool)
    if pool is None:
        known = ", ".join(sorted(pools))
        raise api.InvalidRun([("spec.hardware.pool", f"unknown pool {hardware.pool!r} (known: {known})")], source)
    if hardware.gpus_per_node > pool.gpus_per_node:
        raise api.InvalidRun(
            [
                (
                    "spec.hardware.gpusPerNode",
                    f"{hardware.gpus_per_node} exceeds the {pool.gpus_per_node} GPUs per node of pool {pool.name}",
                )
            ],
            source,
        )
    return pool


def spec_with_defaults(run: api.TrainingRun, source: str = "", overrides: Sequence[str] = ()) -> dict:
    """The run's spec with its recipe's defaults, validated as the API server would validate it.

    A smoke run's budget caps the run's own; `overrides` (`--set` assignments the caller already
    applied to the run) are applied again over it, so they win as they do everywhere else."""
    spec = run.raw_spec
    if spec.get("smokeTest"):
        spec = apply_sets({"spec": smoke.smoke_spec(spec)}, overrides)["spec"]
    spec = recipes.with_defaults(spec)
    source = f"{source} (with {spec['recipe']} defaults)"
    spec = api.validate({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": run.name}, "spec": spec},
                        source)["spec"]
    if problem := recipes.unsupported_init(spec):
        raise api.InvalidRun([("spec.model.init", problem)], source)
    if problems := recipes.option_problems(spec):
        raise api.InvalidRun(problems, source)
    return spec


def resolve(run: api.TrainingRun, pools: dict[str, Pool], paths: Paths | None = None, source: str = "",
            overrides: Sequence[str] = ()) -> ResolvedRun:
    """`paths`: where things are for the trainer (default: in a pod); `overrides`: see spec_with_defaults."""
    pool = check_pool(run, pools, source)
    merged = spec_with_defaults(run, source, overrides)
    if paths is None:
        paths = POD_PATHS.model_copy(update={"data": smoke.POD_DATA}) if merged.get("smokeTest") else POD_PATHS
    # All pools, so a refusal can name the pools where the run would fit.
    plan = make_plan(api.RunSpec.model_validate(merged), pool, alternatives=pools)
    return ResolvedRun(
        name=run.name, namespace=run.namespace, uid=run.uid, labels=run.labels,
        spec=merged, pool=pool, plan=plan, paths=paths,
    )


# -- --set overrides, as Helm's --set does ----------------------------------

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def _scalar(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if text.startswith("{") and text.endswith("}"):
        return [_scalar(item.strip()) for item in text[1:-1].split(",") if item.strip()]
    return text


def apply_sets(obj: dict, assignments: Sequence[str]) -> dict:
    """Every `path=value` override in order: a later one wins over an earlier one."""
    for assignment in assignments:
        obj = apply_set(obj, assignment)
    return obj


def apply_set(obj: dict, assignment: str) -> dict:
    """Apply one `path.to.field=value` override to a TrainingRun's spec (paths relative to spec).

    As with Helm, `=null` removes the field.
    """
    if "=" not in assignment:
        raise api.InvalidRun([("--set", f"expected path=value, got {assignment!r}")])
    path, _, raw = assignment.partition("=")
    obj = copy.deepcopy(obj)
    node: Any = obj.setdefault("spec", {})
    segments = path.split(".")
    for depth, segment in enumerate(segments):
        match = _SEGMENT.match(segment)
        if not match:
            raise api.InvalidRun([(f"--set {path}", f"bad path segment {segment!r}")])
        key, index = match.group(1), match.group(2)
        last = depth == len(segments) - 1
        if index is None:
            if last and raw == "null":
                node.pop(key, None)
            elif last:
                node[key] = _scalar(raw)
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise api.InvalidRun([(f"--set {path}", f"{key} is not a mapping")])
        else:
            items = node.setdefault(key, [])
            i = int(index)
            while len(items) <= i:
                items.append({} if not last else None)
            if last:
                items[i] = _scalar(raw)
            else:
                node = items[i]
    return obj
