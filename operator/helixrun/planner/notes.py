"""The plan's words: its notes and refusals, written from what the search judged and the plan it made.

Pure text. Every number here was decided in planner.py; these functions only say it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from helixrun.planner import memory as mem
from helixrun.planner import timing
from helixrun.planner.plan import Plan
from helixrun.pools import Pool

if TYPE_CHECKING:
    from helixrun.planner.models import Architecture
    from helixrun.planner.planner import Batching, Context, Judged, Search, Setup, WaysOut


def describe(method: str, zero_stage: int, offload: bool, checkpointing: bool) -> str:
    parts = [method]
    if zero_stage:
        parts.append(f"ZeRO-{zero_stage}" + (" + CPU offload" if offload else ""))
    if checkpointing:
        parts.append("gradient checkpointing")
    return ", ".join(parts)


def setup_words(setup: Setup) -> str:
    return describe(setup.method, setup.zero_stage, setup.offload, setup.checkpointing)


def plan_words(plan: Plan) -> str:
    setup = describe(plan.method, plan.zero_stage, plan.offload, plan.gradient_checkpointing)
    return f"{setup}, micro-batch {plan.micro_batch}"


def model_words(spec, ctx: Context, method: str) -> str:
    return f"{spec.recipe} ({ctx.main.arch.display}) {method}, seq {ctx.seq_len}"


# -- notes every plan of the run carries, fitting or not -----------------------------------


def run_notes(spec, pool: Pool, ctx: Context, method: str, found: Search) -> list[str]:
    """What holds for the run on this pool whatever the setup: precision, the models, the world, and the
    offload rungs host memory ruled out."""
    notes = list(ctx.composition.notes) + precision_notes(spec, pool)
    main = ctx.main.arch
    for c in ctx.composition.components:
        notes += list(c.arch.notes)
        frozen = c.role == "frozen-nograd" or (c is ctx.main and method != "full")
        if frozen and c.arch.storage_dtype == "fp32" and ctx.precision != "fp32":
            notes.append(
                f"{c.arch.display} is published in fp32 ({c.arch.weight_bytes_stored(c.head) / 1e9:.1f} GB): "
                f"load it with torch_dtype={'torch.bfloat16' if ctx.precision == 'bf16' else 'torch.float16'}; "
                f"without an explicit dtype its weights take twice the memory ({c.arch.weight_bytes_stored(c.head) / mem.GIB:.1f} GiB)"
            )
    if ctx.seq_len > main.max_positions:
        notes.append(f"sequence length {ctx.seq_len} exceeds the {main.max_positions} positions {main.display} was trained on")
    if ctx.tf32:
        notes.append("TF32 matmuls enabled (torch.backends.cuda.matmul.allow_tf32)")
    if ctx.world > 1:
        notes.append("DDP with gradient_as_bucket_view=True assumed (no second copy of the gradients)")
    for setup, needed in found.skipped:
        notes.append(
            f"{setup_words(setup)}: needs ~{needed:.0f} GiB of host memory per node, "
            f"more than the {found.host_gib:.0f} GiB its pods take ({found.host_share_gib:g} GiB memoryPerGPU x "
            f"{spec.hardware.gpus_per_node} GPUs)"
        )
    return notes


def precision_notes(spec, pool: Pool) -> list[str]:
    wanted = spec.training.precision or "auto"
    if wanted == "auto" and not pool.bf16:
        return [f"{pool.name} has no bf16: fp16 autocast with a dynamic grad scaler (torch.amp.GradScaler)"]
    if wanted == "fp16":
        return ["fp16 autocast with a dynamic grad scaler (torch.amp.GradScaler)"]
    return []


# -- a plan that fits ------------------------------------------------------------------------


def fitting_notes(spec, pool: Pool, ctx: Context, method: str, found: Search, batching: Batching, plan: Plan) -> list[str]:
    """Why this setup, batch and checkpointing, and what the estimate assumed."""
    chosen, first = found.chosen, found.fitting[0]
    setup = chosen.setup
    notes = []
    if setup.method != method:
        notes.append(f"switched {method} -> {setup.method} (allowQLoRA): LoRA on a half-precision base does not fit {pool.name}")
    if chosen is not first:
        notes.append(
            f"{setup_words(setup)} (micro-batch {chosen.micro_batch}) chosen over {setup_words(first.setup)}, which fits at "
            f"micro-batch {first.micro_batch}: ~{chosen.step_seconds:.0f} s per step against ~{first.step_seconds:.0f} s by this estimate"
        )
    if setup.checkpointing and not any(
        (j.setup.method, j.setup.zero_stage, j.setup.offload) == (setup.method, setup.zero_stage, setup.offload)
        and not j.setup.checkpointing for j in found.fitting
    ):
        notes.append(f"gradient checkpointing on: without it not even micro-batch 1 fits {pool.memory_gib:g} GiB")
    if setup.offload:
        notes.append(
            f"ZeRO-2 with CPU offload: ~{chosen.host_gib:.0f} GiB host memory per node; "
            "the optimizer steps on the CPU and weights and gradients cross PCIe every micro-batch"
        )
    if setup.zero_stage:
        notes.append(
            "ZeRO-2 as the trainer runs it (FSDP2, reshard_after_forward=False, AMP on fp32 shards): "
            "the gathered fp32 weights stay on the GPU from forward to backward"
        )
    notes += batching_notes(batching, ctx.seq_len, ctx.world)
    if plan.total_seconds is None:
        notes.append("training.epochs: the ETA needs the data set size, known only when the data is read")
    save = timing.checkpoint_save_seconds(plan.checkpoint_bytes)
    if plan.async_checkpoint:
        notes.append(
            f"a blocking save (~{save:.0f} s for {plan.checkpoint_bytes / 1e9:.1f} GB) would not fit the 30 s torchrun allows workers "
            "after SIGTERM: the checkpoint is staged to host memory and written asynchronously; the grace period covers the write"
        )
    main = ctx.main
    p_main = main.arch.params(main.head)
    tflops = timing.effective_tflops(pool.peak_tflops, plan.precision, plan.tf32)
    notes.append(
        f"assumed MFU {plan.mfu:.0%} of {tflops:g} TFLOPS, {plan.flops_per_token / 1e9:.2f} GFLOP per token "
        f"({plan.flops_per_token / max(1, p_main):.1f} x the {p_main / 1e6:,.0f} M parameters of {main.arch.display}); "
        f"checkpoints written at {timing.CHECKPOINT_WRITE_BYTES_PER_S / 1e6:.0f} MB/s"
    )
    return notes


def batching_notes(b: Batching, seq_len: int, world: int) -> list[str]:
    notes = []
    if b.unit == "tokens" and b.effective != b.requested:
        notes.append(
            f"global batch {b.effective:,} tokens = {b.micro_batch} x {b.grad_accum} x {seq_len} tokens x {world} ranks, "
            f"{b.effective - b.requested:+,} ({(b.effective - b.requested) / b.requested:+.2%}) from the {b.requested:,} asked for "
            f"(micro-batches are whole sequences of up to {seq_len} tokens); "
            f"training.globalBatch.tokens: {b.effective} would be exact"
        )
    elif b.unit == "samples" and b.effective != b.requested:
        notes.append(
            f"global batch {b.effective} samples = {b.micro_batch} x {b.grad_accum} x {world} ranks, {b.effective - b.requested:+} "
            f"from the {b.requested} asked for; training.globalBatch.samples: {b.effective} would be exact"
        )
    elif b.unit == "samples" and b.micro_batch < b.max_micro and b.micro_batch < b.requested / world:
        notes.append(
            f"micro-batch {b.micro_batch} (up to {b.max_micro} fits) so that {b.micro_batch} x {b.grad_accum} x {world} ranks "
            f"is exactly {b.requested} samples"
        )
    if b.effective > 1.05 * b.requested:
        notes.append(f"the global batch is more than 5% over the {b.requested:,} {b.unit} asked for")
    return notes


# -- refusals --------------------------------------------------------------------------------


def not_trainable(arch: Architecture) -> str:
    return f"{arch.display} ({arch.hf_id}) is used for precompute only, not trained"


def precision_refusal(pool: Pool) -> str:
    return (
        f"training.precision: bf16 was asked for but pool {pool.name} ({pool.gpu_product}) has no bf16: "
        "set training.precision: fp16 or auto"
    )


def refusal(spec, pool: Pool, ctx: Context, method: str, smallest: Judged | None, ways: WaysOut | None,
            found: Search) -> str:
    """Why nothing fits, the smallest estimate, and the ways out the search found."""
    if smallest is None:
        text = f"{model_words(spec, ctx, method)}: no setup left to try on {pool.name}"
    else:
        total = smallest.at_one.total
        text = (
            f"{model_words(spec, ctx, method)} needs ~{total:.1f} GiB per GPU even at micro-batch 1 "
            f"({setup_words(smallest.setup)}); {pool.name} has {pool.memory_gib:g} GiB (planning to {found.limit_gib:.1f})"
        )
        text += ways_out_words(ways)
    if found.skipped:
        text += (
            f" (ZeRO-2 CPU offload was not tried: it needs ~{found.skipped[-1][1]:.0f} GiB of host memory per node, "
            f"{found.host_gib:.0f} GiB requested: raise spec.hardware.memoryPerGPU if the nodes have it)"
        )
    return text


def ways_out_words(ways: WaysOut) -> str:
    words = []
    for other, total in ways.methods.items():
        words.append(f"use method {'lora' if other == 'lora' else 'qlora (4-bit base)'} (~{total:.1f} GiB)")
    if ways.allow_qlora is not None:
        words.append(f"allow QLoRA with model.allowQLoRA: true (~{ways.allow_qlora:.1f} GiB)")
    if ways.wider is not None:
        plan, gpus = ways.wider
        words.append(f"train on {gpus} GPUs per node ({plan_words(plan)}, ~{plan.memory.total:.1f} GiB)")
    if ways.pools is None:
        words.append(f"use a pool with more than {ways.pool_gib_needed:.0f} GiB per GPU")
    elif ways.pools:
        words.append("use pool " + " or ".join(
            f"{name} (~{plan.memory.total:.1f} of {memory_gib:g} GiB, {plan_words(plan)})"
            for memory_gib, name, plan in ways.pools
        ))
    return ": " + ", ".join(words) if words else ""
