"""The Plan: what the planner decided for one run on one pool.

Produced by `helixrun.planner.make_plan`, stored in the run's resolved config
(the trainer obeys it) and summarised in the TrainingRun's status.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MemoryEstimate(BaseModel):
    """Peak GPU memory per rank, in GiB, by what holds it."""

    model_config = ConfigDict(frozen=True)

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    @property
    def allocated(self) -> float:
        """What `torch.cuda.max_memory_allocated` should report: everything but context and fragmentation."""
        return self.weights + self.gradients + self.optimizer + self.activations


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    fits: bool
    method: Literal["full", "lora", "qlora"]
    # Where the main model's weights start (spec.model.init): released weights, or fresh ones (pretraining).
    init: Literal["pretrained", "scratch"] = "pretrained"
    precision: Literal["bf16", "fp16", "fp32"]
    tf32: bool = False
    attention: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    distributed: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    zero_stage: int = 0
    offload: bool = False
    gradient_checkpointing: bool = False
    world_size: int = 1
    # One micro-batch per rank: samples, or a token budget when batches count tokens.
    micro_batch: int = 1
    micro_batch_tokens: int | None = None
    grad_accum: int = 1
    global_batch: int = 1
    global_batch_unit: Literal["samples", "tokens"] = "samples"
    global_batch_exact: bool = True
    seq_len: int = 512
    memory: MemoryEstimate | None = None
    memory_limit_gib: float = 0.0
    step_seconds: float | None = None
    total_seconds: float | None = None
    cost_usd: float | None = None
    checkpoint_bytes: int = 0
    checkpoint_save_seconds: float = 0.0
    grace_period_seconds: int = 60
    # Added by the planner issue: what the estimate rests on.
    load_dtype: Literal["bf16", "fp16", "fp32", "nf4"] = "bf16"
    total_params: int = 0
    trainable_params: int = 0
    effective_global_batch: int = 0
    tokens_per_step: int = 0
    flops_per_token: float = 0.0
    mfu: float | None = None
    async_checkpoint: bool = False
    host_memory_gib: float = 0.0
    notes: list[str] = Field(default_factory=list)
    # Set when fits is False: why, and the ways out.
    refusal: str | None = None
