"""The TrainingRun API: examples validate, bad runs are refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from helixrun import api
from helixrun.pools import default_pools
from helixrun.resolve import apply_set, resolve

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("run-*.yaml"))


def base_run(**spec_overrides) -> dict:
    spec = {"recipe": "esm2-mlm", "hardware": {"pool": "a800"}, "training": {"maxSteps": 10}}
    spec.update(spec_overrides)
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "r"}, "spec": spec}


def refused_fields(obj: dict) -> list[str]:
    with pytest.raises(api.InvalidRun) as info:
        resolve(api.TrainingRun.from_object(obj), default_pools())
    return info.value.fields


def test_there_is_one_example_per_recipe():
    recipes = {yaml.safe_load(p.read_text())["spec"]["recipe"] for p in EXAMPLES}
    assert recipes == set(api.spec_schema()["properties"]["recipe"]["enum"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_resolve(path):
    (run,) = api.load_runs(path.read_text(), str(path))
    resolved = resolve(run, default_pools())
    assert resolved.spec["recipe"] == run.spec.recipe
    assert resolved.plan.world_size == run.spec.hardware.nodes * run.spec.hardware.gpus_per_node


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.update(recipe="alphafold"), "spec.recipe"),
        (lambda s: s["hardware"].update(pool="v100"), "spec.hardware.pool"),
        (lambda s: s["training"].update(optimizer={"lr": -1e-4}), "spec.training.optimizer.lr"),
        (lambda s: s["hardware"].update(gpusPerNode=9), "spec.hardware.gpusPerNode"),
        (lambda s: s.update(env=[{"name": "HF_TOKEN", "value": "hf_abc"}]), "spec.env"),
        (lambda s: s.update(env=[{"name": "MASTER_ADDR", "value": "x"}]), "spec.env"),
        (lambda s: s["training"].update(epochs=2), "spec.training"),
        (lambda s: s["training"].update(globalBatch={"samples": 2, "tokens": 9}), "spec.training.globalBatch"),
        (lambda s: s.update(checkpointing={"keepLast": 0}), "spec.checkpointing.keepLast"),
        (lambda s: s.update(metrics={"port": 80}), "spec.metrics.port"),
        (lambda s: s.update(resumeFrom="step-100"), "spec.resumeFrom"),
        (lambda s: s.update(model={"method": "full", "lora": {"r": 8}}), "spec.model.lora"),
        (lambda s: s.update(unknownField=1), "spec.unknownField"),
        (lambda s: s.pop("hardware"), "spec.hardware"),
    ],
)
def test_invalid_runs_are_refused_naming_the_field(change, field):
    obj = base_run()
    change(obj["spec"])
    assert field in refused_fields(obj)


def test_every_problem_is_reported_at_once():
    obj = base_run(metrics={"port": 1})
    obj["spec"]["training"]["optimizer"] = {"lr": 0}
    assert {"spec.metrics.port", "spec.training.optimizer.lr"} <= set(refused_fields(obj))


def test_defaults_come_from_the_schema():
    run = api.TrainingRun.from_object(base_run())
    assert (run.spec.hardware.nodes, run.spec.hardware.gpus_per_node) == (1, 1)
    assert run.spec.training.precision == "auto"


def test_secret_by_reference_is_accepted():
    ref = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    run = api.TrainingRun.from_object(base_run(env=[ref]))
    assert run.spec.env[0].value_from.secret_key_ref.name == "hf"


def test_yaml_errors_name_file_and_line():
    with pytest.raises(api.InvalidRun) as info:
        api.load_runs("spec:\n  recipe: [unclosed\n", "bad.yaml")
    assert "bad.yaml:" in str(info.value)


def test_multi_document_errors_name_the_document():
    good = yaml.safe_dump(base_run())
    bad = yaml.safe_dump(base_run(recipe="nope"))
    with pytest.raises(api.InvalidRun) as info:
        api.load_runs(good + "---\n" + bad, "runs.yaml")
    assert "runs.yaml (document 2)" in str(info.value)


def test_set_overrides_fields_relative_to_spec():
    obj = apply_set(base_run(), "metrics.port=9500")
    obj = apply_set(obj, "training.optimizer.lr=3e-4")
    obj = apply_set(obj, "evaluation.metrics={loss,perplexity}")
    run = api.TrainingRun.from_object(obj)
    assert run.spec.metrics.port == 9500
    assert run.spec.training.optimizer.lr == pytest.approx(3e-4)
    assert run.spec.evaluation.metrics == ["loss", "perplexity"]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(max_size=20))
def test_set_never_crashes_and_never_mutates_its_input(path, value):
    obj = base_run()
    before = copy.deepcopy(obj)
    try:
        out = apply_set(obj, f"{path}={value}")
    except api.InvalidRun:
        return
    finally:
        assert obj == before
    try:
        api.TrainingRun.from_object(out)
    except api.InvalidRun as exc:
        assert exc.problems and all(isinstance(f, str) for f in exc.fields)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(["training", "hardware", "model", "data", "checkpointing", "env", "metrics"]), json_values)
def test_validation_refuses_garbage_with_a_field_or_accepts_a_typed_run(section, garbage):
    obj = base_run()
    obj["spec"][section] = garbage
    try:
        run = api.TrainingRun.from_object(obj)
    except api.InvalidRun as exc:
        assert all(f.startswith("spec") for f in exc.fields), exc.problems
    else:
        assert run.spec.recipe == "esm2-mlm"


def test_full_training_drops_the_recipes_lora_defaults():
    run = api.TrainingRun.from_object(base_run(recipe="genechat", model={"method": "full"}))
    resolved = resolve(run, default_pools())
    assert resolved.spec["model"]["method"] == "full" and "lora" not in resolved.spec["model"]


def test_a_runs_global_batch_replaces_the_recipes_whole():
    run = api.TrainingRun.from_object(base_run(training={"maxSteps": 5, "globalBatch": {"samples": 64}}))
    assert resolve(run, default_pools()).spec["training"]["globalBatch"] == {"samples": 64}


def test_acronyms_stay_one_word_in_attribute_names():
    run = api.TrainingRun.from_object(base_run(model={"allowQLoRA": True}))
    assert run.spec.model.allow_qlora is True


def test_set_null_removes_a_field_as_helm_does():
    obj = apply_set(base_run(training={"epochs": 3}), "training.epochs=null")
    obj = apply_set(obj, "training.maxSteps=7")
    assert api.TrainingRun.from_object(obj).spec.training.max_steps == 7
