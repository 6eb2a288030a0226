"""GPU pools: cluster configuration the operator reads, never per-run YAML.

A pool names a kind of GPU node: how pods land there (node selector, tolerations),
what the planner may assume (memory, precision support, throughput, price), and
the host CPU and memory a run takes per GPU it uses (Kubernetes quantities: the
pods request them, and CPU offload may use that memory). Per GPU, so a 1-GPU run
on an 8-GPU node takes an eighth and runs pack; a run may override both in
spec.hardware.

The operator reads pools from a file (the chart mounts its `pools` value as one);
`helixrun render --pools FILE` reads the same format.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from helixrun import quantity

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU nodes are commonly tainted so only GPU work lands there; tolerating the taint
# is harmless where it is absent.
DEFAULT_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)
# Host share per GPU of a pool file that does not state one (what every pod requested before pools could say).
DEFAULT_CPU_PER_GPU = "4"
DEFAULT_MEMORY_PER_GPU = "24Gi"


class Pool(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    name: str
    gpu_product: str = Field(alias="gpuProduct")
    memory_gib: float = Field(alias="memoryGiB", gt=0)
    gpus_per_node: int = Field(alias="gpusPerNode", ge=1)
    bf16: bool
    tf32: bool
    flash_attention2: bool = Field(alias="flashAttention2")
    nvlink: bool
    peak_tflops: float = Field(alias="peakTFLOPS", gt=0)
    price_per_gpu_hour: float | None = Field(default=None, alias="pricePerGPUHour", ge=0)
    cpu_per_gpu: quantity.Quantity = Field(default=DEFAULT_CPU_PER_GPU, alias="cpuPerGPU")
    memory_per_gpu: quantity.Quantity = Field(default=DEFAULT_MEMORY_PER_GPU, alias="memoryPerGPU")
    extra_node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[dict, ...] = DEFAULT_TOLERATIONS

    @property
    def node_selector(self) -> dict[str, str]:
        return {GPU_PRODUCT_LABEL: self.gpu_product, **self.extra_node_selector}


@dataclass(frozen=True)
class HostShare:
    """Host CPU (cores) and memory (bytes) one GPU of a run brings with it: the run's own, else its pool's."""

    cpu: Decimal
    memory: Decimal

    @classmethod
    def of(cls, pool: Pool, hardware) -> "HostShare":
        """`hardware` is the run's typed spec.hardware (cpu_per_gpu / memory_per_gpu may be unset)."""
        return cls(cpu=quantity.parse(hardware.cpu_per_gpu or pool.cpu_per_gpu),
                   memory=quantity.parse(hardware.memory_per_gpu or pool.memory_per_gpu))

    @property
    def memory_gib(self) -> float:
        return float(self.memory / quantity.GIB)


class PoolConfigError(ValueError):
    pass


def parse_pools(text: str, source: str) -> dict[str, Pool]:
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PoolConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise PoolConfigError(f"{source}: expected a non-empty list of pools")
    pools: dict[str, Pool] = {}
    for i, entry in enumerate(entries):
        try:
            pool = Pool.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PoolConfigError(f"{source}: pools[{i}].{where}: {first['msg']}") from exc
        if pool.name in pools:
            raise PoolConfigError(f"{source}: pools[{i}].name: duplicate pool {pool.name!r}")
        pools[pool.name] = pool
    return pools


def default_pools() -> dict[str, Pool]:
    resource = files("helixrun") / "pools.yaml"
    return parse_pools(resource.read_text(), "helixrun/pools.yaml")


def load_pools(path: str | Path | None) -> dict[str, Pool]:
    if path is None:
        return default_pools()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PoolConfigError(f"{path}: {exc.strerror}") from exc
    return parse_pools(text, str(path))
