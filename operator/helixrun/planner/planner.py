"""The hardware planner: (run spec, pool) -> Plan, pure and deterministic.

The run's spec arrives merged with its recipe's defaults. The planner walks a
ladder of setups from cheapest in compute to most frugal in memory and, among
those that fit (each at the largest micro-batch that fits), takes the one with
the smallest estimated step time (ties: the earlier rung):

  full:  DDP -> DDP + checkpointing -> ZeRO-2 -> ZeRO-2 + checkpointing
         -> ZeRO-2 + CPU offload (if host memory allows) -> ... + checkpointing
         (billion-parameter models on several GPUs start at ZeRO-2)
  lora:  LoRA -> LoRA + checkpointing -> (allowQLoRA) QLoRA -> QLoRA + checkpointing
  qlora: QLoRA -> QLoRA + checkpointing

ZeRO-2 plans say distributed="deepspeed", zero_stage=2; the trainer runs them on
FSDP2 and memory.py models that (see its docstring). Nothing fits: `fits=False`
and a refusal giving the smallest estimate and the ways out (another method,
QLoRA, more GPUs, a pool where it fits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from helixrun.planner import memory as mem
from helixrun.planner import timing
from helixrun.planner.models import Architecture, Component, Composition, compose
from helixrun.planner.plan import MemoryEstimate, Plan
from helixrun.pools import HostShare, Pool

CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace: never in max_memory_allocated, always on the GPU
NCCL_GIB = 0.5  # NCCL communicator buffers when world > 1
FRAGMENTATION = 0.10  # caching-allocator fragmentation, as a share of what is allocated
USABLE_FRACTION = 0.95  # safety margin: plan to at most 95 % of the pool's memory
LARGE_MODEL_PARAMS = 1_000_000_000  # full training at this size on >1 GPU goes straight to ZeRO-2
DEFAULT_LORA = {"llama": ("q_proj", "v_proj"), "esm": ("query", "value")}


@dataclass(frozen=True)
class Setup:
    method: str  # full | lora | qlora
    zero_stage: int = 0
    offload: bool = False
    checkpointing: bool = False

    def describe(self) -> str:
        parts = [self.method]
        if self.zero_stage:
            parts.append(f"ZeRO-{self.zero_stage}" + (" + CPU offload" if self.offload else ""))
        if self.checkpointing:
            parts.append("gradient checkpointing")
        return ", ".join(parts)


@dataclass(frozen=True)
class Context:
    """Everything about the run and pool the memory estimate needs, decided once."""

    composition: Composition
    pool: Pool
    world: int
    precision: str
    tf32: bool
    attention: str
    seq_len: int
    lora_r: int
    lora_targets: tuple[str, ...]
    lora_dropout: float

    @property
    def main(self) -> Component:
        return self.composition.main


# -- memory for one setup at one micro-batch ---------------------------------------


def _trainable(ctx: Context, setup: Setup) -> tuple[int, int]:
    """(params, tensors) trained, across components."""
    params = tensors = 0
    for c in ctx.composition.components:
        if c.role == "frozen-nograd":
            continue
        if c is ctx.main and setup.method != "full":
            p, t = c.arch.lora_params(ctx.lora_r, ctx.lora_targets)
        else:
            p, t = c.arch.params(c.head), c.arch.tensors(c.head)
        params += p + c.extra_trainable
        tensors += t + c.extra_trainable_tensors
    return params, tensors


def _frozen_weight_bytes(ctx: Context, setup: Setup) -> float:
    half = 4 if ctx.precision == "fp32" else mem.HALF
    total = 0.0
    for c in ctx.composition.components:
        if c.role == "frozen-nograd":
            total += c.arch.params(c.head) * half
        elif c is ctx.main and setup.method == "qlora":
            total += mem.quantized_weight_bytes(c.arch, c.head)
        elif c is ctx.main and setup.method == "lora":
            total += c.arch.params(c.head) * half
    return total


def estimate(ctx: Context, setup: Setup, micro_batch: int) -> MemoryEstimate:
    p_train, t_train = _trainable(ctx, setup)
    frozen = _frozen_weight_bytes(ctx, setup)
    overhead_fixed = CONTEXT_GIB * mem.GIB + (NCCL_GIB * mem.GIB if ctx.world > 1 else 0.0)
    if setup.zero_stage:
        weights, gradients, optimizer = mem.fsdp2_zero2_bytes(p_train, t_train, ctx.world, setup.offload)
        weights += frozen
        gradients += mem.FP32 * _largest_layer_params(ctx)  # one block's unsharded gradients before reduce-scatter
    else:
        weights, gradients, optimizer = mem.trainable_state_bytes(p_train, t_train)
        weights += frozen
    # Autocast keeps a half copy of each trained weight it casts until backward frees it.
    cast_cache = mem.HALF * p_train if ctx.precision != "fp32" else 0.0
    activations = cast_cache
    nograd_peak = 0.0
    for c in ctx.composition.components:
        if c.role == "frozen-nograd":
            nograd_peak = max(nograd_peak, mem.activation_bytes(c, micro_batch, ctx.attention, False, ctx.precision))
            continue
        if c is ctx.main and setup.method != "full":
            role_setup = "lora"
        else:
            role_setup = "train"  # AMP on fp32 weights, also under FSDP2
        comp = Component(c.arch, role_setup, c.head, c.tokens_per_sample, c.attention_span)
        attention = ctx.attention if c.arch.attention != ("eager",) else "eager"
        if attention not in c.arch.attention:
            attention = "sdpa" if "sdpa" in c.arch.attention else "eager"
        activations += mem.activation_bytes(
            comp, micro_batch, attention, setup.checkpointing, ctx.precision,
            lora_targets=ctx.lora_targets if role_setup == "lora" else (),
            lora_dropout=ctx.lora_dropout, lora_r=ctx.lora_r,
        )
    activations = max(activations, nograd_peak + cast_cache)
    allocated = weights + gradients + optimizer + activations
    overhead = overhead_fixed + FRAGMENTATION * allocated
    g = mem.GIB
    return MemoryEstimate(
        weights=weights / g, gradients=gradients / g, optimizer=optimizer / g,
        activations=activations / g, overhead=overhead / g,
    )


def host_memory_needed_gib(ctx: Context, setup: Setup) -> float:
    if not setup.offload:
        return 0.0
    p_train, _ = _trainable(ctx, setup)
    return mem.fsdp2_offload_host_bytes(p_train) / mem.GIB


def _largest_layer_params(ctx: Context) -> int:
    return max(c.arch.layer_params() for c in ctx.composition.components if c.role != "frozen-nograd")


# -- choices ---------------------------------------------------------------------


def _precision(spec, pool: Pool) -> tuple[str, list[str], str | None]:
    wanted = spec.training.precision or "auto"
    notes: list[str] = []
    if wanted == "auto":
        if pool.bf16:
            return "bf16", notes, None
        notes.append(f"{pool.name} has no bf16: fp16 autocast with a dynamic grad scaler (torch.amp.GradScaler)")
        return "fp16", notes, None
    if wanted == "bf16" and not pool.bf16:
        return "bf16", notes, (
            f"training.precision: bf16 was asked for but pool {pool.name} ({pool.gpu_product}) has no bf16: "
            "set training.precision: fp16 or auto"
        )
    if wanted == "fp16":
        notes.append("fp16 autocast with a dynamic grad scaler (torch.amp.GradScaler)")
    return wanted, notes, None


def _attention(arch: Architecture, pool: Pool, precision: str) -> str:
    if "flash_attention_2" in arch.attention and pool.flash_attention2 and precision in ("bf16", "fp16"):
        return "flash_attention_2"
    if "sdpa" in arch.attention:
        return "sdpa"
    return "eager"


def _ladder(method: str, allow_qlora: bool, params: int, world: int) -> list[Setup]:
    if method == "full":
        ddp = [Setup("full"), Setup("full", checkpointing=True)]
        zero = [Setup("full", 2), Setup("full", 2, checkpointing=True)] if world > 1 else []
        offload = [Setup("full", 2, True), Setup("full", 2, True, True)]
        first = zero + ddp if (world > 1 and params >= LARGE_MODEL_PARAMS) else ddp + zero
        return first + offload
    if method == "lora":
        rungs = [Setup("lora"), Setup("lora", checkpointing=True)]
        if allow_qlora:
            rungs += [Setup("qlora"), Setup("qlora", checkpointing=True)]
        return rungs
    return [Setup("qlora"), Setup("qlora", checkpointing=True)]


def _limit(pool: Pool) -> float:
    return pool.memory_gib * USABLE_FRACTION


def _largest_micro_batch(ctx: Context, setup: Setup, cap: int) -> int:
    """Largest micro-batch in 1..cap whose estimate fits (0 if none); memory grows with the micro-batch."""
    limit = _limit(ctx.pool)
    if estimate(ctx, setup, 1).total > limit:
        return 0
    lo, hi = 1, max(1, cap)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(ctx, setup, mid).total <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class Batching:
    micro_batch: int
    grad_accum: int
    unit: str
    requested: int
    effective: int
    exact: bool
    note: str | None


def _batching(spec, world: int, seq_len: int, max_micro: int) -> Batching:
    batch = spec.training.global_batch
    if batch is not None and batch.tokens:
        tokens = batch.tokens
        # Fewest accumulation steps at the largest micro-batch that fits, then the smallest micro-batch that
        # reaches the budget in that many steps (never above max_micro): the overshoot stays under one
        # sequence per rank per accumulation step.
        accum = max(1, math.ceil(tokens / (max_micro * seq_len * world)))
        micro = max(1, math.ceil(tokens / (accum * seq_len * world)))
        effective = accum * micro * seq_len * world
        note = None
        if effective != tokens:
            note = (
                f"global batch {effective:,} tokens = {micro} x {accum} x {seq_len} tokens x {world} ranks, "
                f"{effective - tokens:+,} ({(effective - tokens) / tokens:+.2%}) from the {tokens:,} asked for "
                f"(micro-batches are whole sequences of up to {seq_len} tokens); "
                f"training.globalBatch.tokens: {effective} would be exact"
            )
        return Batching(micro, accum, "tokens", tokens, effective, effective == tokens, note)
    samples = batch.samples if batch is not None and batch.samples else world
    per_rank = samples / world
    if per_rank == int(per_rank):
        per_rank = int(per_rank)
        micro = max(d for d in range(1, min(max_micro, per_rank) + 1) if per_rank % d == 0)
        accum = per_rank // micro
    else:  # fewest accumulation steps, then the smallest micro-batch that reaches the batch in that many
        accum = max(1, math.ceil(per_rank / max_micro))
        micro = max(1, math.ceil(samples / (accum * world)))
    effective = accum * micro * world
    note = None
    if effective != samples:
        note = (
            f"global batch {effective} samples = {micro} x {accum} x {world} ranks, {effective - samples:+} "
            f"from the {samples} asked for; training.globalBatch.samples: {effective} would be exact"
        )
    elif micro < max_micro and micro < per_rank:
        note = f"micro-batch {micro} (up to {max_micro} fits) so that {micro} x {accum} x {world} ranks is exactly {samples} samples"
    return Batching(micro, accum, "samples", samples, effective, effective == samples, note)


def _cap(spec, world: int, seq_len: int) -> int:
    batch = spec.training.global_batch
    if batch is not None and batch.tokens:
        return max(1, math.ceil(batch.tokens / (seq_len * world)))
    samples = batch.samples if batch is not None and batch.samples else world
    return max(1, math.ceil(samples / world))


def _context(spec, pool: Pool, composition: Composition, precision: str) -> Context:
    main = composition.main.arch
    lora = spec.model.lora
    targets = tuple(lora.target_modules) if lora and lora.target_modules else DEFAULT_LORA.get(main.family, ("q_proj", "v_proj"))
    return Context(
        composition=composition,
        pool=pool,
        world=spec.hardware.nodes * spec.hardware.gpus_per_node,
        precision=precision,
        tf32=pool.tf32,
        attention=_attention(main, pool, precision),
        seq_len=composition.main.tokens_per_sample,
        lora_r=lora.r if lora and lora.r else 8,
        lora_targets=targets,
        lora_dropout=lora.dropout if lora and lora.dropout is not None else 0.05,
    )


def _flops_per_token(ctx: Context, setup: Setup) -> float:
    """Per token of the main stack, including frozen encoders' forward and extra trained stacks."""
    total = 0.0
    main_tokens = ctx.main.tokens_per_sample
    for c in ctx.composition.components:
        arch = c.arch
        matmul = arch.params(c.head) - arch.vocab * arch.hidden * (0 if c.head == "mlm" else 1)
        share = c.tokens_per_sample / main_tokens  # tokens of this component per main token
        if c.role == "frozen-nograd":
            seq = 128 if arch.family == "bert-glu" else c.tokens_per_sample
            total += share * timing.forward_flops_per_token(matmul, arch.layers, arch.hidden, seq)
            continue
        frozen = c is ctx.main and setup.method != "full"
        total += share * timing.training_flops_per_token(
            matmul + c.extra_trainable, arch.layers, arch.hidden, c.tokens_per_sample,
            frozen_base=frozen, checkpointing=setup.checkpointing, causal=arch.family == "llama",
        )
    return total


def _tokens_per_step(batching: Batching, seq_len: int) -> int:
    samples_per_step = batching.effective if batching.unit == "samples" else batching.effective // seq_len
    return samples_per_step * seq_len


def _step_seconds(spec, ctx: Context, setup: Setup, batching: Batching) -> float:
    """Estimated seconds per optimizer step: compute at the assumed MFU, + CPU offload, + gradient communication."""
    main = ctx.main.arch
    p_train, _ = _trainable(ctx, setup)
    mfu = timing.assumed_mfu(main.family, main.params(ctx.main.head), setup.method)
    tflops = timing.effective_tflops(ctx.pool.peak_tflops, ctx.precision, ctx.tf32)
    step = _tokens_per_step(batching, ctx.seq_len) * _flops_per_token(ctx, setup) / (ctx.world * tflops * 1e12 * mfu)
    if setup.offload:
        step += timing.offload_seconds_per_step(p_train, ctx.world, batching.grad_accum)
    step += timing.sync_seconds_per_step(p_train, ctx.world, spec.hardware.nodes, ctx.pool.nvlink, bool(setup.zero_stage),
                                         batching.grad_accum)
    return step


def _checkpoint_bytes(ctx: Context, setup: Setup) -> int:
    p_train, t_train = _trainable(ctx, setup)
    per_param = 4 + 8  # fp32 weights + AdamW exp_avg, exp_avg_sq (FSDP2 shards save the same bytes)
    return int(p_train * per_param + t_train * 4)


def make_plan(spec, pool: Pool, alternatives: dict[str, Pool] | None = None) -> Plan:
    """Plan one run on one pool. `alternatives` (all configured pools) lets a refusal name pools where it fits."""
    try:
        composition = compose(spec)
    except KeyError as exc:  # a model the catalog does not know: refuse, do not crash the operator
        return _refused_without_estimate(spec, pool, str(exc.args[0]))
    main = composition.main.arch
    if not main.trainable:
        return _refused_without_estimate(spec, pool, f"{main.display} ({main.hf_id}) is used for precompute only, not trained")
    notes: list[str] = list(composition.notes)
    precision, precision_notes, precision_refusal = _precision(spec, pool)
    notes += precision_notes
    ctx = _context(spec, pool, composition, precision)
    world = ctx.world
    seq_len = ctx.seq_len
    method = spec.model.method or "full"
    allow_qlora = allows_qlora(spec)
    p_main = main.params(composition.main.head)
    for c in composition.components:
        notes += list(c.arch.notes)
        frozen = c.role == "frozen-nograd" or (c is composition.main and method != "full")
        if frozen and c.arch.storage_dtype == "fp32" and precision != "fp32":
            notes.append(
                f"{c.arch.display} is published in fp32 ({c.arch.weight_bytes_stored(c.head) / 1e9:.1f} GB): "
                f"load it with torch_dtype={'torch.bfloat16' if precision == 'bf16' else 'torch.float16'}; "
                f"without an explicit dtype its weights take twice the memory ({c.arch.weight_bytes_stored(c.head) / mem.GIB:.1f} GiB)"
            )
    if seq_len > main.max_positions:
        notes.append(f"sequence length {seq_len} exceeds the {main.max_positions} positions {main.display} was trained on")
    if ctx.tf32:
        notes.append("TF32 matmuls enabled (torch.backends.cuda.matmul.allow_tf32)")
    if world > 1:
        notes.append("DDP with gradient_as_bucket_view=True assumed (no second copy of the gradients)")

    cap = _cap(spec, world, seq_len)
    ladder = _ladder(method, allow_qlora, p_main, world)
    fitting: list[tuple[Setup, int, float]] = []  # (setup, largest micro-batch, estimated step seconds), ladder order
    tried: list[tuple[Setup, MemoryEstimate]] = []
    # CPU offload may use the host memory the run's pods request: memoryPerGPU (the run's, else the pool's) per GPU.
    share = HostShare.of(pool, spec.hardware)
    host_gib = share.memory_gib * spec.hardware.gpus_per_node
    skipped_offload: float | None = None
    for setup in ladder if precision_refusal is None else []:
        if setup.offload and host_memory_needed_gib(ctx, setup) > host_gib:
            skipped_offload = host_memory_needed_gib(ctx, setup)
            notes.append(
                f"{setup.describe()}: needs ~{host_memory_needed_gib(ctx, setup):.0f} GiB of host memory per node, "
                f"more than the {host_gib:.0f} GiB its pods take ({share.memory_gib:g} GiB memoryPerGPU x "
                f"{spec.hardware.gpus_per_node} GPUs)"
            )
            continue
        tried.append((setup, estimate(ctx, setup, 1)))
        micro = _largest_micro_batch(ctx, setup, cap)
        if micro:
            fitting.append((setup, micro, _step_seconds(spec, ctx, setup, _batching(spec, world, seq_len, micro))))
    # Among the setups that fit, the fastest by the estimate below (ties: the earlier rung). Checkpointing or
    # offload can win: a larger micro-batch means fewer per-micro-batch transfers (PCIe, ZeRO-2 collectives).
    chosen = min(fitting, key=lambda f: f[2]) if fitting else None

    base = dict(
        precision=precision, tf32=ctx.tf32, attention=ctx.attention, world_size=world, seq_len=seq_len,
        memory_limit_gib=round(_limit(pool), 2), total_params=sum(c.arch.params(c.head) for c in composition.components),
        host_memory_gib=found.host_gib, init=spec.model.init or "pretrained",
    )
    if chosen is None:
        smallest = min(tried, key=lambda t: t[1].total) if tried else None
        refusal = precision_refusal or _refusal(spec, pool, ctx, method, smallest, alternatives)
        if skipped_offload is not None and precision_refusal is None:
            refusal += (
                f" (ZeRO-2 CPU offload was not tried: it needs ~{skipped_offload:.0f} GiB of host memory per node, "
                f"{host_gib:.0f} GiB requested: raise spec.hardware.memoryPerGPU if the nodes have it)"
            )
        setup = smallest[0] if smallest else Setup(method)
        p_train, _ = _trainable(ctx, setup)
        return Plan(
            fits=False, method=setup.method, refusal=refusal, memory=smallest[1] if smallest else None,
            distributed=_distributed(setup, world), zero_stage=setup.zero_stage, offload=setup.offload,
            gradient_checkpointing=setup.checkpointing, global_batch=_requested(spec, world),
            global_batch_unit="tokens" if spec.training.global_batch and spec.training.global_batch.tokens else "samples",
            trainable_params=p_train, load_dtype=_load_dtype(setup, precision), notes=notes, **base,
        )

    setup, max_micro, _ = chosen
    first_setup, first_micro, first_step = fitting[0]
    if setup.method != method:
        notes.append(f"switched {method} -> {setup.method} (allowQLoRA): LoRA on a half-precision base does not fit {pool.name}")
    if setup is not first_setup:
        notes.append(
            f"{setup.describe()} (micro-batch {max_micro}) chosen over {first_setup.describe()}, which fits at "
            f"micro-batch {first_micro}: ~{chosen[2]:.0f} s per step against ~{first_step:.0f} s by this estimate"
        )
    if setup.checkpointing and not any(f[0] == Setup(setup.method, setup.zero_stage, setup.offload) for f in fitting):
        notes.append(f"gradient checkpointing on: without it not even micro-batch 1 fits {pool.memory_gib:g} GiB")
    if setup.offload:
        notes.append(
            f"ZeRO-2 with CPU offload: ~{host_memory_needed_gib(ctx, setup):.0f} GiB host memory per node; "
            "the optimizer steps on the CPU and weights and gradients cross PCIe every micro-batch"
        )
    if setup.zero_stage:
        notes.append(
            "ZeRO-2 as the trainer runs it (FSDP2, reshard_after_forward=False, AMP on fp32 shards): "
            "the gathered fp32 weights stay on the GPU from forward to backward"
        )
    batching = _batching(spec, world, seq_len, max_micro)
    if batching.note:
        notes.append(batching.note)
    if batching.effective > 1.05 * batching.requested:
        notes.append(f"the global batch is more than 5% over the {batching.requested:,} {batching.unit} asked for")
    memory = estimate(ctx, setup, batching.micro_batch)
    p_train, t_train = _trainable(ctx, setup)

    flops = _flops_per_token(ctx, setup)
    mfu = timing.assumed_mfu(main.family, p_main, setup.method)
    tflops = timing.effective_tflops(pool.peak_tflops, precision, ctx.tf32)
    tokens_per_step = _tokens_per_step(batching, seq_len)
    step = _step_seconds(spec, ctx, setup, batching)
    total_steps = spec.training.max_steps
    total = step * total_steps if total_steps else None
    if total is None:
        notes.append("training.epochs: the ETA needs the data set size, known only when the data is read")
    cost = total / 3600 * world * pool.price_per_gpu_hour if total is not None and pool.price_per_gpu_hour is not None else None

    ckpt = _checkpoint_bytes(ctx, setup)
    save = timing.checkpoint_save_seconds(ckpt)
    async_save = save > timing.TORCHRUN_SIGKILL_SECONDS
    if async_save:
        notes.append(
            f"a blocking save (~{save:.0f} s for {ckpt / 1e9:.1f} GB) would not fit the 30 s torchrun allows workers "
            "after SIGTERM: the checkpoint is staged to host memory and written asynchronously; the grace period covers the write"
        )
    notes.append(
        f"assumed MFU {mfu:.0%} of {tflops:g} TFLOPS, {flops / 1e9:.2f} GFLOP per token "
        f"({flops / max(1, p_main):.1f} x the {p_main / 1e6:,.0f} M parameters of {main.display}); "
        f"checkpoints written at {timing.CHECKPOINT_WRITE_BYTES_PER_S / 1e6:.0f} MB/s"
    )
    return Plan(
        fits=True, method=setup.method, distributed=_distributed(setup, world), zero_stage=setup.zero_stage,
        offload=setup.offload, gradient_checkpointing=setup.checkpointing,
        micro_batch=batching.micro_batch,
        micro_batch_tokens=batching.micro_batch * seq_len if batching.unit == "tokens" else None,
        grad_accum=batching.grad_accum, global_batch=batching.requested, global_batch_unit=batching.unit,
        global_batch_exact=batching.exact, effective_global_batch=batching.effective, memory=memory,
        step_seconds=step, total_seconds=total, cost_usd=cost, checkpoint_bytes=ckpt,
        checkpoint_save_seconds=round(save, 1), grace_period_seconds=timing.grace_period_seconds(save, step),
        async_checkpoint=async_save, load_dtype=_load_dtype(setup, precision), trainable_params=p_train,
        tokens_per_step=tokens_per_step, flops_per_token=flops, mfu=mfu,
        notes=notes, **base,
    )


def _refused_without_estimate(spec, pool: Pool, why: str) -> Plan:
    precision = spec.training.precision if spec.training.precision not in (None, "auto") else ("bf16" if pool.bf16 else "fp16")
    return Plan(fits=False, method=spec.model.method or "full", precision=precision, refusal=why,
                world_size=spec.hardware.nodes * spec.hardware.gpus_per_node, memory_limit_gib=round(_limit(pool), 2))


def allows_qlora(spec) -> bool:
    """Whether the run lets the planner fall back to 4-bit QLoRA (spec.model.allowQLoRA)."""
    return bool(spec.model.allow_qlora)


def _requested(spec, world: int) -> int:
    batch = spec.training.global_batch
    if batch is None:
        return world
    return batch.tokens or batch.samples or world


def _distributed(setup: Setup, world: int) -> str:
    if setup.zero_stage or setup.offload:
        return "deepspeed"
    return "ddp" if world > 1 else "none"


def _load_dtype(setup: Setup, precision: str) -> str:
    if setup.method == "qlora":
        return "nf4"
    if precision == "fp32" or setup.method == "full":
        return "fp32"  # AMP trains fp32 weights (sharded or not)
    return precision


def _model_words(spec, ctx: Context, method: str) -> str:
    size = ctx.main.arch.display
    return f"{spec.recipe} ({size}) {method}, seq {ctx.seq_len}"


def _refusal(spec, pool: Pool, ctx: Context, method: str, smallest, alternatives) -> str:
    if smallest is None:
        return f"{_model_words(spec, ctx, method)}: no setup left to try on {pool.name}"
    setup, est = smallest
    head = (
        f"{_model_words(spec, ctx, method)} needs ~{est.total:.1f} GiB per GPU even at micro-batch 1 "
        f"({setup.describe()}); {pool.name} has {pool.memory_gib:g} GiB (planning to {_limit(pool):.1f})"
    )
    ways: list[str] = []
    if method == "full":
        for other in ("lora", "qlora"):
            alt = _smallest_total(ctx, other)
            words = "use method lora" if other == "lora" else "use method qlora (4-bit base)"
            ways.append(f"{words} (~{alt:.1f} GiB)")
    elif method == "lora" and not allows_qlora(spec):
        ways.append(f"allow QLoRA with model.allowQLoRA: true (~{_smallest_total(ctx, 'qlora'):.1f} GiB)")
    if method == "full" and ctx.world < pool.gpus_per_node:
        wider = spec.model_copy(update={"hardware": spec.hardware.model_copy(update={"gpus_per_node": pool.gpus_per_node})})
        plan = make_plan(wider, pool)
        if plan.fits:
            ways.append(f"train on {pool.gpus_per_node} GPUs per node ({_plan_words(plan)}, ~{plan.memory.total:.1f} GiB)")
    if alternatives:
        fitting = []
        for name, other in sorted(alternatives.items()):
            if name == pool.name or other.gpus_per_node < spec.hardware.gpus_per_node:
                continue  # a pool whose nodes cannot host the run's gpusPerNode is no way out
            plan = make_plan(spec, other)
            if plan.fits:
                fitting.append((other.memory_gib, name, plan))
        if fitting:
            fitting.sort(key=lambda f: (f[0], f[1]))
            ways.append(
                "use pool "
                + " or ".join(f"{n} (~{p.memory.total:.1f} of {m:g} GiB, {_plan_words(p)})" for m, n, p in fitting[:3])
            )
    else:
        ways.append(f"use a pool with more than {est.total / USABLE_FRACTION:.0f} GiB per GPU")
    return head + (": " + ", ".join(ways) if ways else "")


def _plan_words(plan: Plan) -> str:
    setup = Setup(plan.method, plan.zero_stage, plan.offload, plan.gradient_checkpointing)
    return f"{setup.describe()}, micro-batch {plan.micro_batch}"


def _smallest_total(ctx: Context, method: str) -> float:
    return min(estimate(ctx, s, 1).total for s in (Setup(method), Setup(method, checkpointing=True)))
