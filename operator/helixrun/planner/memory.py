"""Peak GPU memory per rank: the formulas, one function per thing that holds memory.

Everything here is bytes, computed from shapes (models.py) and the training
setup. The planner (planner.py) sums them and compares with the pool.

Model states (exact; tests build the tiny model with torch and compare byte for byte):
- DDP / single GPU, mixed precision (torch autocast): weights fp32 (4 B/param),
  gradients fp32 (4 B), AdamW exp_avg + exp_avg_sq fp32 (8 B) plus one 4-byte
  `step` tensor per parameter tensor, of trainable parameters only. Autocast
  keeps a half-precision copy of every weight it casts (linears) alive until
  backward: +2 B/param, counted with the activations.
- ZeRO-2 plans run on FSDP2 in the trainer (trainer/helixrun_trainer/distributed.py:
  fully_shard per block, reshard_after_forward=False, no MixedPrecisionPolicy, AMP
  autocast): fp32 shards of weights, gradients and AdamW states (4 + 4 + 8 B/param
  over N ranks), plus the gathered fp32 weights, resident from forward to backward
  (4 B/param), plus autocast's half copies (2 B/param); with CPU offload the shards
  and the optimizer step live in host memory (16 B/param x 1.5 for pinned buffers)
  and 6 B/param stays on the GPU. DeepSpeed's own ZeRO-2 would hold 2P + 18P/N
  (`zero2_gpu_bytes`, kept as the anchor the tests compare with).
- LoRA / QLoRA: the base frozen in half precision (or NF4 with double
  quantization, 4.127 bits/param on the layer linears, the rest half); PEFT keeps
  adapters in fp32 (16 B/param with gradients and AdamW states).

Activations (per token per layer, bytes) were measured on CPU with
`torch.autograd.graph.saved_tensors_hooks` on tiny transformers models under
bf16 autocast (tests/planner/test_activations.py re-measures them on other
shapes), then fitted as `c_h·h + c_f·ffn (+ 6·heads·s for eager attention)`.
For comparison Korthikanti et al. give `34h + 5·a·s` per token for a GPT layer
(GeLU MLP with ffn = 4h, LayerNorm, dropout): a SwiGLU/RMSNorm Llama layer in
HF saves 34h + 8·ffn (= 56h at ffn = 2.69h) because RMSNorm runs in fp32 and
SwiGLU keeps three ffn-wide tensors; SDPA/FlashAttention drop the s² term
(only a 4-byte log-sum-exp per head stays). A frozen base (LoRA) saves less:
frozen linears need their weights, not their inputs, for the input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from helixrun.planner.models import Architecture, Component

GIB = 1024**3
NF4_BITS = 4.127  # NF4 + double quantization (QLoRA paper: constants 0.5 -> 0.127 bits/param)
HALF = 2
FP32 = 4
ADAM_STATE = 8  # exp_avg + exp_avg_sq, fp32
ADAM_STEP = 4  # one fp32 `step` scalar per parameter tensor


@dataclass(frozen=True)
class ActivationProfile:
    """Saved bytes per token per layer under half-precision autocast."""

    c_hidden: float
    c_ffn: float
    c_heads: float  # per head (SDPA/flash log-sum-exp)
    c_eager: float  # per head per key position, eager attention only (softmax probs)
    constant: float
    residual_bytes: int  # bytes/element of the residual stream (what checkpointing keeps per layer)
    source: str


# Measured on CPU (transformers 5.23, torch 2.15), fitted; see module docstring.
PROFILES: dict[tuple[str, str], ActivationProfile] = {
    ("llama", "train"): ActivationProfile(34, 8, 4, 6, 40, FP32, "measured: tiny LlamaForCausalLM, fp32 weights, bf16 autocast"),
    # Frozen base: the adapters' share is added per targeted module (lora_module_bytes).
    ("llama", "lora"): ActivationProfile(16, 6, 4, 6, 72, HALF, "measured: tiny Llama, bf16 base, LoRA q/v"),
    ("esm", "train"): ActivationProfile(30, 8, 4, 6, 16, FP32, "measured (eager): tiny EsmForMaskedLM, fp32 weights, bf16 autocast"),
    ("esm", "lora"): ActivationProfile(14, 6, 4, 6, 40, HALF, "measured (eager): tiny ESM, bf16 base, LoRA query/value"),
    # A half-precision module without autocast (DeepSpeed's bf16/fp16 engine, or FSDP2 with
    # MixedPrecisionPolicy(param_dtype=bf16)). The trainer runs neither today: ZeRO plans use "train".
    ("llama", "train-half"): ActivationProfile(24, 8, 4, 6, 8, HALF, "measured: tiny Llama in bf16, no autocast"),
    ("esm", "train-half"): ActivationProfile(22, 8, 4, 6, 8, HALF, "measured (eager): tiny ESM in bf16, no autocast"),
    # Not measurable here (CUDA-only kernels / custom model): analytic, conservative.
    ("mamba-bi", "train"): ActivationProfile(80, 0, 0, 0, 0, FP32, "analytic: two Mamba mixers (x, z, conv, delta, B, C saved) + fuse"),
    ("denoiser", "train"): ActivationProfile(48, 8, 8, 6, 0, FP32, "analytic: Korthikanti GPT layer + cross-attention block"),
}


def profile(arch: Architecture, role: str) -> ActivationProfile:
    """role: train (AMP, fp32 weights), train-half (ZeRO: half module), lora (half frozen base)."""
    key = (arch.family, role if role in ("lora", "train-half") else "train")
    if key not in PROFILES:
        key = (arch.family, "train")
    return PROFILES[key]


def lora_module_bytes(arch: Architecture, targets: tuple[str, ...], dropout: float, r: int) -> float:
    """Per token per layer, what LoRA adds (measured): with dropout the mask and the fp32 dropped input and
    its half cast (6 B per input element), without it the half input (2 B); A's output (2 B per rank)."""
    per_input = 6 if dropout > 0 else 2
    total = 0.0
    for linear in arch.layer_linears():
        if any(linear.name == t or linear.name.endswith("." + t) for t in targets):
            total += per_input * linear.in_features + 2 * r
    return total


def layer_activation_bytes(
    arch: Architecture, role: str, attention: str, seq_len: int, *, precision: str = "bf16",
    lora_targets: tuple[str, ...] = (), lora_dropout: float = 0.0, lora_r: int = 0,
) -> float:
    """Bytes saved for backward per token in one layer (no checkpointing)."""
    p = profile(arch, role)
    per_token = p.c_hidden * arch.hidden + p.c_ffn * arch.ffn + p.c_heads * arch.heads + p.constant
    if attention == "eager":
        per_token += p.c_eager * arch.heads * seq_len
    if role == "lora":
        per_token += lora_module_bytes(arch, lora_targets, lora_dropout, lora_r)
    if precision == "fp32":
        per_token *= 2  # no autocast: every saved tensor is fp32 (uncalibrated, conservative)
    return per_token


def outer_activation_bytes(arch: Architecture, head: str, precision: str) -> float:
    """Per token outside the layers: fp32 logits for the loss (saved log-softmax + its gradient at the peak), embeddings."""
    per_token = 11 * arch.hidden
    if head in ("lm", "mlm"):
        per_token += 12 * arch.vocab  # log_softmax out (4V) saved; dlogits fp32 (4V) + half logits/grad at the peak
    return per_token * (2 if precision == "fp32" else 1)


def backward_transient_bytes(arch: Architecture) -> float:
    """Per token: gradients of the current layer's activations while backward runs through it."""
    return 8 * arch.hidden + 4 * arch.ffn


def activation_bytes(
    component: Component, micro_batch: int, attention: str, checkpointing: bool, precision: str = "bf16",
    lora_targets: tuple[str, ...] = (), lora_dropout: float = 0.0, lora_r: int = 0,
) -> float:
    """Peak activation bytes for one component at a micro-batch (samples)."""
    arch = component.arch
    seq = component.span
    tokens = micro_batch * component.tokens_per_sample
    if component.role == "frozen-nograd":
        # Forward under no_grad: nothing saved; peak is one layer's working set (plus eager scores).
        work = tokens * (8 * arch.hidden + 4 * arch.ffn)
        if "eager" == _encoder_attention(arch):
            work += (tokens / seq) * arch.heads * seq * seq * 4
        return work
    layer = layer_activation_bytes(
        arch, component.role, attention, seq, precision=precision,
        lora_targets=lora_targets, lora_dropout=lora_dropout, lora_r=lora_r,
    )
    outer = outer_activation_bytes(arch, component.head, precision)
    transient = backward_transient_bytes(arch)
    # The loss's logits peak and a layer's backward peak come one after the other, not together.
    if checkpointing:
        kept = profile(arch, component.role).residual_bytes * arch.hidden * (2 if precision == "fp32" else 1)
        per_token = arch.layers * kept + max(outer, layer + transient)  # every layer's input + one layer recomputed
    else:
        per_token = arch.layers * layer + max(outer, transient)
    return tokens * per_token


def _encoder_attention(arch: Architecture) -> str:
    return "eager" if arch.attention == ("eager",) else "sdpa"


# -- model states -----------------------------------------------------------


def quantized_weight_bytes(arch: Architecture, head: str) -> float:
    """NF4 + double quantization on the layer linears; embeddings, norms, biases, head stay half precision."""
    quantized = arch.quantizable_params()
    return quantized * NF4_BITS / 8 + (arch.params(head) - quantized) * HALF


def trainable_state_bytes(params: int, tensors: int, unused: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes of fp32 trainable parameters with AdamW.

    `unused` parameters (built, never in the loss) get neither a gradient nor optimizer state.
    """
    used, used_tensors = params - unused[0], tensors - unused[1]
    return params * FP32, used * FP32, used * ADAM_STATE + used_tensors * ADAM_STEP


def zero2_gpu_bytes(params: int, world: int, offload: bool) -> float:
    """DeepSpeed ZeRO-2 model states per GPU: 2P + 18P/N, or 2P with the optimizer offloaded."""
    return 2 * params if offload else 2 * params + 18 * params / world


def zero2_host_bytes(params: int, world: int) -> float:
    """Host memory per node for DeepSpeed ZeRO-2 CPU offload, as DeepSpeed estimates it (1.5 buffer factor)."""
    return params * max(4 * world, 16) * 1.5


def fsdp2_zero2_bytes(params: int, tensors: int, world: int, offload: bool) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) per GPU for ZeRO-2 on FSDP2 as the trainer runs it (AMP, fp32 shards).

    Weights: the gathered fp32 copy (kept between forward and backward) + this rank's fp32 shard.
    Autocast's half copies are counted with the activations. Offload moves shards, gradients and
    optimizer states to the host."""
    if offload:
        return params * FP32, 0.0, 0.0
    return params * FP32 + params * FP32 / world, params * FP32 / world, (params * ADAM_STATE + tensors * ADAM_STEP) / world


def fsdp2_offload_host_bytes(params: int) -> float:
    """Host memory per node for FSDP2 CPU offload: fp32 shards, gradients, AdamW states (16 B/param) x 1.5 pinned."""
    return params * 16 * 1.5


def deepspeed_all_live_estimate(total_params: int, world: int, offload: bool = False) -> float:
    """What `estimate_zero2_model_states_mem_needs_all_live` reports per GPU: it counts every parameter, trainable or not."""
    return zero2_gpu_bytes(total_params, world, offload)


def accelerate_estimate(total_params: int, dtype_bytes: int = 4) -> dict[str, float]:
    """`accelerate estimate-memory`: model size, and Adam training as 4x the model; no activations, no LoRA."""
    model = total_params * dtype_bytes
    return {"model": model, "training_adam": 4 * model}
