"""Mixed precision: autocast dtype and gradient scaler from the plan and the device.

bf16: autocast, no scaler. fp16: autocast + GradScaler (its state is checkpointed).
fp32: neither. On CPU the run trains in fp32 unless the spec asks explicitly
(training.precision bf16), because the plan's "auto" targets the GPU pool.
"""

from __future__ import annotations

import contextlib

import torch


class Precision:
    def __init__(self, plan_precision: str, spec_precision: str | None, device: torch.device):
        if device.type == "cpu" and (spec_precision in (None, "auto")):
            plan_precision = "fp32"
        if device.type == "cpu" and plan_precision == "fp16":
            plan_precision = "bf16"  # fp16 autocast on CPU is slow and unscaled; bf16 is the CPU's half type
        self.name = plan_precision
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[plan_precision]
        self.scaler = torch.amp.GradScaler(device.type) if plan_precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
