"""The API server refuses invalid TrainingRuns itself, naming the field (CRD schema + CEL)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import EXAMPLES, apply, run_object

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("run-*.yaml")))
def test_examples_are_accepted_by_the_api_server(crd_installed, namespace, example):
    result = apply(crd_installed, run_object(EXAMPLES / example), namespace, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"recipe": "alphafold"}, "spec.recipe"),
        ({"training": {"maxSteps": 5, "optimizer": {"lr": -1.0}}}, "spec.training.optimizer.lr"),
        ({"training": {"maxSteps": 5, "epochs": 2}}, "spec.training"),
        ({"env": [{"name": "HF_TOKEN", "value": "hf_inline"}]}, "spec.env"),
        ({"env": [{"name": "WORLD_SIZE", "value": "3"}]}, "spec.env"),
        ({"hardware": {"pool": "a800", "gpusPerNode": 0}}, "spec.hardware.gpusPerNode"),
        ({"hardware": {"pool": "a800", "memoryPerGPU": "24GB"}}, "spec.hardware.memoryPerGPU"),
        ({"hardware": {"pool": "a800", "cpuPerGPU": 0}}, "spec.hardware.cpuPerGPU"),
        ({"smokeTest": "yes"}, "spec.smokeTest"),
        ({"metrics": {"port": 80}}, "spec.metrics.port"),
        ({"resumeFrom": "relative/step-10"}, "spec.resumeFrom"),
        ({"checkpointing": {"keepBest": {"metric": "eval_nonsense"}}}, "spec.checkpointing.keepBest.metric"),
        ({"unknownField": True}, "unknownField"),
    ],
)
def test_invalid_runs_are_refused_naming_the_field(crd_installed, namespace, change, field):
    result = apply(crd_installed, run_object(EXAMPLES / "run-esm2.yaml", **change), namespace, check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def test_host_share_quantities_and_smoke_runs_are_accepted(crd_installed, namespace):
    obj = run_object(EXAMPLES / "run-esm2.yaml", smokeTest=True,
                     hardware={"pool": "rtx4090", "nodes": 2, "gpusPerNode": 1, "cpuPerGPU": 2, "memoryPerGPU": "3Gi"})
    result = apply(crd_installed, obj, namespace, check=False)
    assert result.returncode == 0, result.stderr


def test_python_and_api_server_agree_on_validation(crd_installed, namespace):
    """The same CEL rule in both places: what `helixrun render` refuses, kubectl apply refuses."""
    from helixrun import api

    obj = run_object(EXAMPLES / "run-esm2.yaml", env=[{"name": "DB_PASSWORD", "value": "x"}])
    with pytest.raises(api.InvalidRun) as info:
        api.TrainingRun.from_object(obj)
    result = apply(crd_installed, obj, namespace, check=False)
    assert result.returncode != 0
    assert info.value.problems[0][1] in result.stderr
