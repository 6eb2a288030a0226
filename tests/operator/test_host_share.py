"""Host CPU and memory per GPU: pools state them, a run may override them, pods request them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from helixrun import api, quantity
from helixrun.pools import HostShare, PoolConfigError, default_pools, parse_pools
from helixrun.render import RenderSettings, render_run
from helixrun.resolve import resolve

SETTINGS = RenderSettings(trainer_image="registry.example/trainer:test")
POOL = {"name": "small", "gpuProduct": "NVIDIA-T4", "memoryGiB": 16, "gpusPerNode": 4, "bf16": False, "tf32": False,
        "flashAttention2": False, "nvlink": False, "peakTFLOPS": 65}


def container(pools, gpus=2, **hardware) -> dict:
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "r", "namespace": "bio"},
           "spec": {"recipe": "esm2-mlm", "model": {"name": "facebook/esm2_t6_8M_UR50D"},
                    "hardware": {"pool": "small", "gpusPerNode": gpus, **hardware}, "training": {"maxSteps": 10}}}
    job = next(o for o in render_run(resolve(api.TrainingRun.from_object(obj), pools), SETTINGS)
               if o["kind"] == "PyTorchJob")
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


def pools_with(**share) -> dict:
    return parse_pools(yaml.safe_dump([{**POOL, **share}]), "pools.yaml")


def test_requests_are_the_pools_share_per_gpu_times_the_runs_gpus():
    resources = container(pools_with(cpuPerGPU="1500m", memoryPerGPU="12Gi"), gpus=2)["resources"]
    assert resources == {"requests": {"cpu": "3", "memory": "24Gi"},
                         "limits": {"memory": "24Gi", "nvidia.com/gpu": 2}}


def test_a_run_overrides_its_pools_share():
    resources = container(pools_with(cpuPerGPU=8, memoryPerGPU="64Gi"), gpus=3, cpuPerGPU="250m",
                          memoryPerGPU="1536Mi")["resources"]
    assert resources["requests"] == {"cpu": "750m", "memory": "4608Mi"}
    assert resources["limits"]["memory"] == "4608Mi"


def test_a_pool_that_does_not_say_gets_the_old_share():
    assert container(pools_with(), gpus=1)["resources"]["requests"] == {"cpu": "4", "memory": "24Gi"}


# `local` is the CPU stand-in of single-machine clusters (pools.yaml), sized to a laptop, not to a GPU's loader.
@pytest.mark.parametrize("name", sorted(set(default_pools()) - {"local"}))
def test_every_default_gpu_pool_states_a_share_a_gpu_can_train_with(name):
    pool = default_pools()[name]
    share = HostShare.of(pool, api.RunSpec.model_validate({"hardware": {"pool": name}}).hardware)
    assert share.cpu >= 1 and share.memory_gib >= 16, "a GPU with less host memory than this starves its loader"


@pytest.mark.parametrize("field", ["cpuPerGPU", "memoryPerGPU"])
@pytest.mark.parametrize("value", ["0", "-1", "24GB", "lots", 0, "1e3", ""])
def test_a_bad_run_quantity_is_refused_naming_the_field(field, value):
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "r"},
           "spec": {"recipe": "esm2-mlm", "hardware": {"pool": "a800", field: value}, "training": {"maxSteps": 1}}}
    with pytest.raises(api.InvalidRun) as info:
        api.TrainingRun.from_object(obj)
    assert info.value.fields == [f"spec.hardware.{field}"]


@pytest.mark.parametrize("field", ["cpuPerGPU", "memoryPerGPU"])
def test_a_bad_pool_quantity_is_refused_naming_the_pool_and_field(field):
    with pytest.raises(PoolConfigError, match=re.escape(f"pools.yaml: pools[0].{field}: String should match")):
        pools_with(**{field: "24 GiB"})


# -- the quantity format: what the CRD pattern accepts is what the Kubernetes parser reads ---------------------

SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5,
            "E": 1000**6, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
       st.sampled_from(sorted(SUFFIXES)))
def test_accepted_quantities_parse_to_their_value(number, suffix):
    text = f"{number}{suffix}"
    accepted = re.fullmatch(quantity.PATTERN, text) is not None
    assert accepted == (number > 0), text
    if accepted:
        assert quantity.parse(text) == number * SUFFIXES[suffix]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.-+eEkmMGTPiKn ", max_size=8))
def test_every_string_the_pattern_accepts_the_parser_reads_as_positive(text):
    if re.fullmatch(quantity.PATTERN, text):
        assert quantity.parse(text) > 0


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**7), st.integers(1, 64))
def test_rendered_quantities_read_back_as_the_share_times_gpus(millis, gpus):
    cores = Decimal(millis) / 1000
    assert quantity.parse(quantity.cpu(cores * gpus)) == cores * gpus
    size = Decimal(millis) * 1024**2
    assert quantity.parse(quantity.memory(size * gpus)) == size * gpus
