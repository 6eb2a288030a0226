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

`search` judges the ladder and chooses; `make_plan` turns its choice into the
Plan's numbers; notes.py words both (notes, refusals). All three are pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from helixrun.planner import memory as mem
from helixrun.planner import notes, timing
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


def _precision(spec, pool: Pool) -> str:
    """The precision asked for; auto: bf16 where the pool has it, else fp16 (a bf16 run on such a pool is refused)."""
    wanted = spec.training.precision or "auto"
    if wanted == "auto":
        return "bf16" if pool.bf16 else "fp16"
    return wanted


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
    max_micro: int  # the largest micro-batch that fits


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
        return Batching(micro, accum, "tokens", tokens, effective, effective == tokens, max_micro)
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
    return Batching(micro, accum, "samples", samples, effective, effective == samples, max_micro)


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


@dataclass(frozen=True)
class Judged:
    """One rung of the ladder as the search judged it."""

    setup: Setup
    at_one: MemoryEstimate  # per GPU at micro-batch 1
    micro_batch: int  # the largest that fits; 0: not even 1
    step_seconds: float | None  # estimated at that micro-batch; None when nothing fits
    host_gib: float  # host memory per node CPU offload needs (0 without offload)


@dataclass(frozen=True)
class Search:
    """The setups the search judged on one pool, in ladder order, and the one it chose."""

    judged: tuple[Judged, ...]
    skipped: tuple[tuple[Setup, float], ...]  # offload rungs left out: the host GiB per node each needs
    host_gib: float  # host memory the run's pods take per node
    host_share_gib: float  # of it, per GPU (memoryPerGPU)
    limit_gib: float  # the pool's memory per GPU the plan may use
    chosen: Judged | None

    @property
    def fitting(self) -> list[Judged]:
        return [j for j in self.judged if j.micro_batch]

    @property
    def smallest(self) -> Judged | None:
        return min(self.judged, key=lambda j: j.at_one.total) if self.judged else None


def search(spec, ctx: Context, method: str, *, precision_fits: bool = True) -> Search:
    """Judge every rung of the method's ladder; among those that fit (each at its largest micro-batch), choose the
    fastest by the step-time estimate (ties: the earlier rung). Checkpointing or offload can win: a larger
    micro-batch means fewer per-micro-batch transfers (PCIe, ZeRO-2 collectives)."""
    # CPU offload may use the host memory the run's pods request: memoryPerGPU (the run's, else the pool's) per GPU.
    share = HostShare.of(ctx.pool, spec.hardware)
    host_gib = share.memory_gib * spec.hardware.gpus_per_node
    cap = _cap(spec, ctx.world, ctx.seq_len)
    judged, skipped = [], []
    ladder = _ladder(method, allows_qlora(spec), ctx.main.arch.params(ctx.main.head), ctx.world)
    for setup in ladder if precision_fits else []:
        needed = host_memory_needed_gib(ctx, setup)
        if setup.offload and needed > host_gib:
            skipped.append((setup, needed))
            continue
        micro = _largest_micro_batch(ctx, setup, cap)
        step = _step_seconds(spec, ctx, setup, _batching(spec, ctx.world, ctx.seq_len, micro)) if micro else None
        judged.append(Judged(setup, estimate(ctx, setup, 1), micro, step, needed))
    fitting = [j for j in judged if j.micro_batch]
    return Search(
        judged=tuple(judged), skipped=tuple(skipped), host_gib=host_gib, host_share_gib=share.memory_gib,
        limit_gib=_limit(ctx.pool), chosen=min(fitting, key=lambda j: j.step_seconds) if fitting else None,
    )


@dataclass(frozen=True)
class WaysOut:
    """What would make a refused run fit, as the search found it."""

    methods: dict[str, float]  # another method -> its smallest GiB per GPU (for a full run)
    allow_qlora: float | None  # QLoRA's smallest GiB per GPU, for a LoRA run that does not allow it
    wider: tuple[Plan, int] | None  # the plan on every GPU of a node, and that count, where it fits
    pools: list[tuple[float, str, Plan]] | None  # (GiB per GPU, name, plan) where it fits; None: no pools given
    pool_gib_needed: float  # what a pool's GPUs would need


def make_plan(spec, pool: Pool, alternatives: dict[str, Pool] | None = None) -> Plan:
    """Plan one run on one pool. `alternatives` (all configured pools) lets a refusal name pools where it fits."""
    try:
        composition = compose(spec)
    except KeyError as exc:  # a model the catalog does not know: refuse, do not crash the operator
        return _refused_without_estimate(spec, pool, str(exc.args[0]))
    if not composition.main.arch.trainable:
        return _refused_without_estimate(spec, pool, notes.not_trainable(composition.main.arch))
    precision = _precision(spec, pool)
    precision_fits = not (spec.training.precision == "bf16" and not pool.bf16)
    ctx = _context(spec, pool, composition, precision)
    method = spec.model.method or "full"
    found = search(spec, ctx, method, precision_fits=precision_fits)
    run_notes = notes.run_notes(spec, pool, ctx, method, found)
    base = dict(
        precision=precision, tf32=ctx.tf32, attention=ctx.attention, world_size=ctx.world, seq_len=ctx.seq_len,
        memory_limit_gib=round(_limit(pool), 2), total_params=sum(c.arch.params(c.head) for c in composition.components),
        host_memory_gib=found.host_gib, init=spec.model.init or "pretrained",
    )
    if found.chosen is None:
        smallest = found.smallest
        if not precision_fits:
            refusal = notes.precision_refusal(pool)
        else:
            ways = _ways_out(spec, pool, ctx, method, smallest, alternatives) if smallest else None
            refusal = notes.refusal(spec, pool, ctx, method, smallest, ways, found)
        setup = smallest.setup if smallest else Setup(method)
        p_train, _ = _trainable(ctx, setup)
        return Plan(
            fits=False, method=setup.method, refusal=refusal, memory=smallest.at_one if smallest else None,
            distributed=_distributed(setup, ctx.world), zero_stage=setup.zero_stage, offload=setup.offload,
            gradient_checkpointing=setup.checkpointing, global_batch=_requested(spec, ctx.world),
            global_batch_unit="tokens" if spec.training.global_batch and spec.training.global_batch.tokens else "samples",
            trainable_params=p_train, load_dtype=_load_dtype(setup, precision), notes=run_notes, **base,
        )

    setup = found.chosen.setup
    batching = _batching(spec, ctx.world, ctx.seq_len, found.chosen.micro_batch)
    p_train, _ = _trainable(ctx, setup)
    main = composition.main
    step = _step_seconds(spec, ctx, setup, batching)
    total_steps = spec.training.max_steps
    total = step * total_steps if total_steps else None
    cost = total / 3600 * ctx.world * pool.price_per_gpu_hour if total is not None and pool.price_per_gpu_hour is not None else None
    ckpt = _checkpoint_bytes(ctx, setup)
    save = timing.checkpoint_save_seconds(ckpt)
    plan = Plan(
        fits=True, method=setup.method, distributed=_distributed(setup, ctx.world), zero_stage=setup.zero_stage,
        offload=setup.offload, gradient_checkpointing=setup.checkpointing,
        micro_batch=batching.micro_batch,
        micro_batch_tokens=batching.micro_batch * ctx.seq_len if batching.unit == "tokens" else None,
        grad_accum=batching.grad_accum, global_batch=batching.requested, global_batch_unit=batching.unit,
        global_batch_exact=batching.exact, effective_global_batch=batching.effective,
        memory=estimate(ctx, setup, batching.micro_batch),
        step_seconds=step, total_seconds=total, cost_usd=cost, checkpoint_bytes=ckpt,
        checkpoint_save_seconds=round(save, 1), grace_period_seconds=timing.grace_period_seconds(save, step),
        async_checkpoint=save > timing.TORCHRUN_SIGKILL_SECONDS, load_dtype=_load_dtype(setup, precision),
        trainable_params=p_train, tokens_per_step=_tokens_per_step(batching, ctx.seq_len),
        flops_per_token=_flops_per_token(ctx, setup),
        mfu=timing.assumed_mfu(main.arch.family, main.arch.params(main.head), setup.method),
        notes=[], **base,
    )
    why = notes.fitting_notes(spec, pool, ctx, method, found, batching, plan)
    return plan.model_copy(update={"notes": run_notes + why})


def _ways_out(spec, pool: Pool, ctx: Context, method: str, smallest: Judged, alternatives) -> WaysOut:
    """Other methods, all of a node's GPUs, other pools: each planned, for the refusal to name what fits."""
    methods = {other: _smallest_total(ctx, other) for other in ("lora", "qlora")} if method == "full" else {}
    allow_qlora = _smallest_total(ctx, "qlora") if method == "lora" and not allows_qlora(spec) else None
    wider = None
    if method == "full" and ctx.world < pool.gpus_per_node:
        every_gpu = spec.model_copy(update={"hardware": spec.hardware.model_copy(update={"gpus_per_node": pool.gpus_per_node})})
        plan = make_plan(every_gpu, pool)
        wider = (plan, pool.gpus_per_node) if plan.fits else None
    pools = None
    if alternatives:
        pools = []
        for name, other in sorted(alternatives.items()):
            if name == pool.name or other.gpus_per_node < spec.hardware.gpus_per_node:
                continue  # a pool whose nodes cannot host the run's gpusPerNode is no way out
            plan = make_plan(spec, other)
            if plan.fits:
                pools.append((other.memory_gib, name, plan))
        pools = sorted(pools, key=lambda f: (f[0], f[1]))[:3]
    return WaysOut(methods, allow_qlora, wider, pools, smallest.at_one.total / USABLE_FRACTION)


def _refused_without_estimate(spec, pool: Pool, why: str) -> Plan:
    return Plan(fits=False, method=spec.model.method or "full", precision=_precision(spec, pool), refusal=why,
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


def _smallest_total(ctx: Context, method: str) -> float:
    return min(estimate(ctx, s, 1).total for s in (Setup(method), Setup(method, checkpointing=True)))
