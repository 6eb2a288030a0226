"""Step time, ETA, cost, checkpoint size and save time: the numbers shown before a run starts.

Assumptions (stated once, used everywhere):
- Throughput is the pool's dense peak TFLOPS (bf16/fp16 tensor cores) times an
  assumed model FLOPs utilisation (MFU, PaLM definition as torchtitan uses it).
  torchtitan measures 56.8 % on A100 (Llama 3 8B, FSDP2) and 33–39 % on H100;
  we assume 40 % for billion-parameter transformers, 35 % for 100M–1B, 20 % for
  smaller models and for Mamba (the selective scan is not a matmul). QLoRA
  dequantises every weight every pass: x0.7. fp32 runs at half the peak with
  TF32, an eighth without.
- FLOPs per token: 6·N for full training, 4·N with a frozen base (LoRA: forward
  2N + input gradients 2N, adapters negligible), +2·N with gradient checkpointing
  (forward recomputed), 2·N for a no-grad encoder, plus attention 12·L·h·s
  (half of it when causal) scaled the same way. N excludes input embeddings
  (a lookup, not a matmul).
- CPU offload (FSDP2 CPUOffloadPolicy) adds the CPU AdamW step (5e8 params/s
  per node) to every optimizer step, and fp32 weights up + fp32 gradients down
  over PCIe (12 GB/s) to every micro-batch.
- Communication, not overlapped with compute: DDP all-reduces fp32 gradients
  once per optimizer step (accumulation under no_sync), 2(N-1)/N x 4 B/param;
  ZeRO-2 on FSDP2 all-gathers fp32 weights and reduce-scatters fp32 gradients
  on every micro-batch (as DeepSpeed ZeRO-2 does, so that only sharded gradients
  are held between micro-batches), (N-1)/N x 4 B/param each per micro-batch;
  at 150 GB/s over NVLink, 10 GB/s over PCIe, 12.5 GB/s (100 Gb/s) between nodes.
- Checkpoints are written at 500 MB/s (a network PVC: provisioned gp3, Ceph
  RBD). On SIGTERM the trainer finishes the step in flight, then saves: the pod's
  grace period is one step + the save time x1.5 + 15 s, at least 60 s.
"""

from __future__ import annotations

import math

MFU_LARGE = 0.40
MFU_MEDIUM = 0.35
MFU_SMALL = 0.20
QLORA_MFU_FACTOR = 0.7
CPU_ADAM_PARAMS_PER_S = 5e8
PCIE_BYTES_PER_S = 12e9
NVLINK_BYTES_PER_S = 150e9
PCIE_P2P_BYTES_PER_S = 10e9
INTERNODE_BYTES_PER_S = 12.5e9
CHECKPOINT_WRITE_BYTES_PER_S = 500e6
GRACE_MIN_SECONDS = 60
GRACE_FIXED_SECONDS = 15
TORCHRUN_SIGKILL_SECONDS = 30


def assumed_mfu(family: str, params: int, method: str) -> float:
    if family == "mamba-bi":
        mfu = MFU_SMALL
    elif params >= 1e9:
        mfu = MFU_LARGE
    elif params >= 1e8:
        mfu = MFU_MEDIUM
    else:
        mfu = MFU_SMALL
    return mfu * (QLORA_MFU_FACTOR if method == "qlora" else 1.0)


def effective_tflops(peak_tflops: float, precision: str, tf32: bool) -> float:
    if precision == "fp32":
        return peak_tflops * (0.5 if tf32 else 0.125)
    return peak_tflops


def training_flops_per_token(
    matmul_params: int, layers: int, hidden: int, seq_len: int, *, frozen_base: bool, checkpointing: bool, causal: bool
) -> float:
    """Model FLOPs per token for one trained stack (forward + backward, + recompute)."""
    passes = 4 if frozen_base else 6  # 2 forward + 2 input-grad (+ 2 weight-grad when trained)
    if checkpointing:
        passes += 2
    attention = 2 * layers * hidden * seq_len * (0.5 if causal else 1.0)  # QK^T and PV, forward, per token
    return passes * matmul_params + passes * attention


def forward_flops_per_token(matmul_params: int, layers: int, hidden: int, seq_len: int) -> float:
    return 2 * matmul_params + 2 * layers * hidden * seq_len


def offload_seconds_per_step(trainable_params: int, world: int, grad_accum: int) -> float:
    cpu_step = trainable_params / CPU_ADAM_PARAMS_PER_S
    pcie = grad_accum * 2 * 4 * trainable_params / world / PCIE_BYTES_PER_S  # every rank moves its share
    return cpu_step + pcie


def sync_seconds_per_step(trainable_params: int, world: int, nodes: int, nvlink: bool, zero: bool,
                          grad_accum: int = 1) -> float:
    if world <= 1:
        return 0.0
    bandwidth = NVLINK_BYTES_PER_S if nvlink else PCIE_P2P_BYTES_PER_S
    if nodes > 1:
        bandwidth = min(bandwidth, INTERNODE_BYTES_PER_S)
    share = (world - 1) / world
    if zero:  # all-gather of weights + reduce-scatter of gradients, both on every micro-batch
        moved = share * 4 * trainable_params * 2 * grad_accum
    else:  # ring all-reduce once per optimizer step
        moved = 2 * share * 4 * trainable_params
    return moved / bandwidth


def checkpoint_save_seconds(checkpoint_bytes: int) -> float:
    return checkpoint_bytes / CHECKPOINT_WRITE_BYTES_PER_S


def grace_period_seconds(save_seconds: float, step_seconds: float) -> int:
    """SIGTERM to SIGKILL: the step in flight finishes, then the checkpoint is saved (x1.5 margin), + fixed slack."""
    return max(GRACE_MIN_SECONDS, math.ceil(step_seconds + save_seconds * 1.5 + GRACE_FIXED_SECONDS))

