"""Recipe options (model.options, data.options) are checked against recipes.OPTION_SCHEMAS when a run resolves:
an unknown option or a bad value is refused with its field named, before a pod starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from helixrun import api, recipes, resolve

# Each recipe's example run, its own options dropped: the options under test are the only ones given.
EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("run-*.yaml"))
BASE = {}
for path in EXAMPLES:
    spec = yaml.safe_load(path.read_text())["spec"]
    for section in ("model", "data"):
        spec.get(section, {}).pop("options", None)
    BASE.setdefault(spec["recipe"], spec)
# One valid value per schema shape, and values no option of that shape takes (integers within CEL's int64).
INT64 = st.integers(min_value=-2**63, max_value=2**63 - 1)
GOOD = {"integer": 3, "number": 0.01, "string": "col", "boolean": True}
BAD = {"integer": st.one_of(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
                            st.integers(min_value=-2**63, max_value=-1)),
       "number": st.one_of(st.text(max_size=5), st.booleans(), st.floats(max_value=-1e-9, allow_nan=False)),
       "string": st.one_of(INT64, st.just("")),
       "boolean": st.one_of(INT64, st.text(max_size=5)),
       "enum": st.text(max_size=12)}
OPTIONS = [(recipe, section, key, schema) for recipe, sections in recipes.OPTION_SCHEMAS.items()
           for section, options in sections.items() for key, schema in options.items()]


def spec_with(recipe: str, section: str, key: str, value) -> dict:
    spec = copy.deepcopy(BASE[recipe])
    spec[section] = {**spec.get(section, {}), "options": {key: value}}
    return spec


def resolved(spec: dict) -> dict:
    run = api.TrainingRun.from_object({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "r"},
                                       "spec": spec})
    return resolve.spec_with_defaults(run)


@pytest.mark.parametrize("recipe, section, key, schema", OPTIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_a_valid_value_of_every_option_resolves(recipe, section, key, schema):
    value = schema["enum"][-1] if "enum" in schema else GOOD[schema["type"]]
    assert resolved(spec_with(recipe, section, key, value))[section]["options"][key] == value


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(OPTIONS).flatmap(lambda o: st.tuples(st.just(o), BAD["enum" if "enum" in o[3] else o[3]["type"]])))
def test_a_bad_value_is_refused_naming_the_option(case):
    (recipe, section, key, schema), value = case
    if "enum" in schema and value in schema["enum"]:
        return
    with pytest.raises(api.InvalidRun) as refused:
        resolved(spec_with(recipe, section, key, value))
    assert f"spec.{section}.options.{key}" in refused.value.fields


@pytest.mark.parametrize("recipe", sorted(recipes.OPTION_SCHEMAS))
def test_an_unknown_option_is_refused_with_the_known_ones(recipe):
    with pytest.raises(api.InvalidRun, match="has no such option") as refused:
        resolved(spec_with(recipe, "model", "noiseSchedul", "sqrt"))
    assert refused.value.fields == ["spec.model.options.noiseSchedul"]


def test_structdiff_beta_end_must_exceed_beta_start():
    with pytest.raises(api.InvalidRun, match="betaEnd: must be larger than betaStart"):
        resolved(spec_with("structdiff", "model", "betaStart", 0.05))
