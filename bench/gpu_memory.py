"""Predicted against measured peak GPU memory: the planner's estimate for one training step, then the real step.

    python bench/gpu_memory.py                   # the default matrix, table on stdout
    python bench/gpu_memory.py --quick           # a few cases
    python bench/gpu_memory.py --json out.json   # also write the rows
    python bench/gpu_memory.py --dry-run         # predictions only (no GPU needed)
    python bench/gpu_memory.py --cpu             # small shapes on CPU, peak from live-tensor tracking

Each case builds a randomly initialised transformers model of a recipe's
architecture family at a tiny-to-medium shape (Llama like METAGENE-1 / Vicuna,
ESM-2), trains it the way the planner assumes (full: fp32 weights + autocast +
fused AdamW; lora: bf16 base + PEFT adapters in fp32; qlora: bitsandbytes NF4
with double quantisation when installed; optional gradient checkpointing), runs
one warm-up step (so optimizer states exist), resets the peak counter, runs a
second step and reads `torch.cuda.max_memory_allocated`. The prediction is the
planner's `MemoryEstimate.allocated` (weights + gradients + optimizer +
activations: no CUDA context, no fragmentation, which the allocator's counter
does not see either). The goal: every prediction within 15 %, and no case the
planner would call fitting that measures above the pool.

`--cpu` runs smaller shapes on the CPU and measures the peak by tracking every
storage a step allocates (a TorchDispatchMode holding weak references; the live
total after each op) on top of the parameters, gradients and optimizer states:
the same accounting as the CUDA caching allocator's counter, without its block
rounding and without CUDA kernels' workspaces. Evidence where no GPU is lent,
not a substitute for the GPU run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from helixrun.planner.models import Architecture, Component, Composition  # noqa: E402
from helixrun.planner.planner import Context, Setup, estimate  # noqa: E402
from helixrun.pools import Pool  # noqa: E402

GIB = 1024**3
TARGET = 0.15


@dataclass(frozen=True)
class Case:
    label: str
    arch: Architecture
    head: str  # lm | mlm | cls:N
    method: str  # full | lora | qlora
    micro_batch: int
    seq_len: int
    checkpointing: bool
    attention: str | None = None  # None: the best the device has
    zero: bool = False  # ZeRO-2 as the trainer runs it: FSDP2 per block, reshard_after_forward=False
    world: int = 1

    @property
    def name(self) -> str:
        ckpt = "+ckpt" if self.checkpointing else ""
        attention = f" {self.attention}" if self.attention else ""
        zero = f" zero2x{self.world}" if self.zero else ""
        return f"{self.label} {self.method}{ckpt}{zero} b{self.micro_batch} s{self.seq_len}{attention}"


def llama(label: str, hidden: int, layers: int, heads: int, ffn: int, vocab: int) -> Architecture:
    return Architecture(f"bench/{label}", label, "llama", layers=layers, hidden=hidden, heads=heads, ffn=ffn,
                        vocab=vocab, max_positions=4096, storage_dtype="fp32")


def esm(label: str, hidden: int, layers: int, heads: int) -> Architecture:
    return Architecture(f"bench/{label}", label, "esm", layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden,
                        vocab=33, max_positions=1026, storage_dtype="fp32")


# METAGENE-1's layer at a quarter of its depth; a Vicuna-like 32k vocabulary; ESM-2 150M and 650M shapes.
METAGENE_8L = llama("metagene-8L", 4096, 8, 32, 11008, 1024)
VICUNA_SMALL = llama("vicuna-like-1B", 2048, 8, 16, 5504, 32000)
ESM_150M = esm("esm2-150M", 640, 30, 20)
ESM_650M = esm("esm2-650M", 1280, 33, 20)


def matrix(quick: bool) -> list[Case]:
    cases = []
    for method in ("full", "lora"):
        for micro, seq in ((1, 512), (4, 512), (8, 256)):
            for ckpt in (False, True):
                cases.append(Case("metagene-8L", METAGENE_8L, "cls:2", method, micro, seq, ckpt))
    for method in ("lora", "qlora"):
        for micro, seq in ((2, 1024), (4, 512)):
            cases.append(Case("vicuna-like-1B", VICUNA_SMALL, "lm", method, micro, seq, False))
    for micro, seq in ((8, 512), (16, 256)):
        for ckpt in (False, True):
            cases.append(Case("esm2-650M", ESM_650M, "mlm", "full", micro, seq, ckpt))
    cases.append(Case("esm2-150M", ESM_150M, "mlm", "full", 32, 512, False))
    cases.append(Case("esm2-150M", ESM_150M, "mlm", "lora", 32, 512, False))
    if quick:
        cases = cases[::4]
    return cases


def cpu_matrix(quick: bool) -> list[Case]:
    small_llama = llama("llama-small", 512, 4, 8, 1376, 1024)
    small_vocab = llama("llama-32k-vocab", 256, 2, 4, 688, 32000)
    small_esm = esm("esm2-small", 320, 4, 20)
    cases = []
    for method in ("full", "lora"):
        for ckpt in (False, True):
            cases.append(Case("llama-small", small_llama, "lm", method, 2, 256, ckpt))
            cases.append(Case("llama-small-cls", small_llama, "cls:2", method, 4, 128, ckpt))
    cases.append(Case("llama-small", small_llama, "lm", "full", 2, 256, False, zero=True, world=2))
    cases.append(Case("llama-32k-vocab", small_vocab, "lm", "lora", 2, 256, False))
    cases.append(Case("llama-32k-vocab", small_vocab, "lm", "full", 2, 256, False))
    # ESM passes a padding mask: CPU SDPA then takes the math path (s² saved), which CUDA does not; compare eager.
    for method in ("full", "lora"):
        cases.append(Case("esm2-small", small_esm, "mlm", method, 4, 128, False, "eager"))
    cases.append(Case("esm2-small", small_esm, "mlm", "full", 4, 128, True, "eager"))
    return cases[::3] if quick else cases


def lora_targets(arch: Architecture) -> tuple[str, ...]:
    return ("q_proj", "v_proj") if arch.family == "llama" else ("query", "value")


def predict(case: Case, memory_gib: float, attention: str) -> float:
    """The planner's allocated bytes for this case (GiB)."""
    pool = Pool(name="bench", gpuProduct="bench", memoryGiB=memory_gib, gpusPerNode=1, bf16=True, tf32=True,
                flashAttention2=attention == "flash_attention_2", nvlink=False, peakTFLOPS=1.0)
    component = Component(case.arch, "train" if case.method == "full" else "lora", case.head, case.seq_len)
    ctx = Context(
        composition=Composition("bench", (component,)), pool=pool, world=case.world, precision="bf16", tf32=True,
        attention=attention, seq_len=case.seq_len, lora_r=8, lora_targets=lora_targets(case.arch), lora_dropout=0.05,
    )
    setup = Setup(case.method, zero_stage=2 if case.zero else 0, checkpointing=case.checkpointing)
    return estimate(ctx, setup, case.micro_batch).allocated


def build(case: Case, attention: str, device: str = "cuda"):
    import torch
    import transformers

    a = case.arch
    if a.family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
            intermediate_size=a.ffn, max_position_embeddings=a.max_positions, attn_implementation=attention,
            pad_token_id=0,
        )
        if case.head == "lm":
            cls = transformers.LlamaForCausalLM
        else:
            cfg.num_labels = int(case.head[4:])
            cls = transformers.LlamaForSequenceClassification
    else:
        cfg = transformers.EsmConfig(
            vocab_size=33, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
            intermediate_size=a.ffn, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
            mask_token_id=32, max_position_embeddings=a.max_positions, attn_implementation=attention,
        )
        cls = transformers.EsmForMaskedLM
    if case.method == "full":
        model = cls(cfg).to(device)  # fp32 weights: autocast trains them in bf16
    elif case.method == "lora":
        model = cls(cfg).to(dtype=torch.bfloat16, device=device)
    else:
        import tempfile

        import bitsandbytes  # noqa: F401  (QLoRA needs it; skipped when absent)

        with tempfile.TemporaryDirectory() as tmp:
            cls(cfg).to(torch.bfloat16).save_pretrained(tmp)
            quant = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            model = cls.from_pretrained(tmp, quantization_config=quant, device_map={"": 0}, dtype=torch.bfloat16)
    if case.method != "full":
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=list(lora_targets(a)))
        )
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if case.method != "full":
            model.enable_input_require_grads()
    model.train()
    return model


def measure(case: Case, attention: str) -> float | str:
    """Peak allocated GiB over one training step after a warm-up step; 'OOM' or 'skipped: …' otherwise."""
    import torch

    try:
        model = build(case, attention)
    except ImportError as exc:
        return f"skipped: {exc.name} not installed"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    high = case.arch.vocab - 1 if case.arch.family == "llama" else 29
    ids = torch.randint(4, high, (case.micro_batch, case.seq_len), device="cuda")
    labels = torch.randint(0, int(case.head[4:]), (case.micro_batch,), device="cuda") if case.head.startswith("cls:") else ids

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated across accumulation, as the planner counts them

    try:
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / GIB
    except torch.cuda.OutOfMemoryError:
        peak = "OOM"
    finally:
        del model, optimizer
        gc.collect()
        torch.cuda.empty_cache()
    return peak


class LivePeak:
    """Peak bytes of storages allocated during a region and alive at once (CPU stand-in for max_memory_allocated)."""

    def __new__(cls, existing: set[int]):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.refs: dict[int, StorageWeakRef] = {}
                self.peak = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for key in [k for k, ref in self.refs.items() if ref.expired()]:
                    del self.refs[key]
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage"):
                        try:
                            storage = t.untyped_storage()
                            key = storage.data_ptr() if storage.nbytes() else 0
                        except RuntimeError:  # a storage FSDP2 has released
                            continue
                        # in-place ops return parameters, gradients, optimizer states: not new memory
                        if key and key not in self.refs and key not in existing:
                            self.refs[key] = StorageWeakRef(storage)
                # current sizes: FSDP2 frees gathered weights by resizing their storage to 0
                live = sum(torch.UntypedStorage._new_with_weak_ptr(ref.cdata).nbytes() for ref in self.refs.values())
                self.peak = max(self.peak, live)
                return out

        return Mode()


def measure_cpu(case: Case, attention: str) -> float | str:
    """Parameters + gradients + optimizer states + the step's peak of live new storages, GiB, on CPU."""
    import torch

    if case.method == "qlora":
        return "skipped: NF4 needs CUDA"
    if case.zero:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.SimpleQueue()
        procs = [ctx.Process(target=_fsdp2_rank, args=(rank, case, attention, results)) for rank in range(case.world)]
        for proc in procs:
            proc.start()
        peaks = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
        return max(peaks)
    return _cpu_peak(case, attention, build(case, attention, device="cpu"))


def _fsdp2_rank(rank: int, case: Case, attention: str, results) -> None:
    """One rank of a gloo group: the model sharded as the trainer shards ZeRO-2 plans, then the CPU peak."""
    import os

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=rank, world_size=case.world)
    try:
        model = build(case, attention, device="cpu")
        mesh = init_device_mesh("cpu", (case.world,))
        for module in model.modules():
            if module.__class__.__name__.endswith(("Layer", "Block")) and module is not model:
                fully_shard(module, mesh=mesh, reshard_after_forward=False)
        fully_shard(model, mesh=mesh, reshard_after_forward=False)
        results.put(_cpu_peak(case, attention, model))
    finally:
        dist.destroy_process_group()


def _cpu_peak(case: Case, attention: str, model) -> float:
    import torch

    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=False)  # fused on GPU: no temporaries either
    high = case.arch.vocab - 1 if case.arch.family == "llama" else 29
    ids = torch.randint(4, high, (case.micro_batch, case.seq_len))
    labels = torch.randint(0, int(case.head[4:]), (case.micro_batch,)) if case.head.startswith("cls:") else ids

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()
    storages = {}

    def keep(t):
        t = getattr(t, "_local_tensor", t)  # FSDP2 shards are DTensors
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for p in model.parameters():
        keep(p)
        if p.grad is not None:
            keep(p.grad)
    for state in optimizer.state.values():
        for t in state.values():
            if torch.is_tensor(t):
                keep(t)
    mode = LivePeak(set(storages))
    with mode:
        step()
    return (sum(storages.values()) + mode.peak) / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every fourth case")
    parser.add_argument("--dry-run", action="store_true", help="predictions only; no GPU needed")
    parser.add_argument("--cpu", action="store_true", help="small shapes on CPU, peak from live-tensor tracking")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--only", help="run cases whose name contains this")
    parser.add_argument("--attention", choices=("sdpa", "flash_attention_2", "eager"), default="sdpa",
                        help="attention implementation (SDPA picks the flash kernel on Ampere and newer)")
    args = parser.parse_args(argv)

    cases = [c for c in (cpu_matrix if args.cpu else matrix)(args.quick) if not args.only or args.only in c.name]
    measure_case = measure
    if args.dry_run:
        memory, attention, device = 80.0, "sdpa", "none (dry run)"
    elif args.cpu:
        memory, attention, device, measure_case = 80.0, "sdpa", "cpu (live-tensor tracking)", measure_cpu
    else:
        try:
            import torch
        except ImportError:
            print("bench/gpu_memory.py needs torch with CUDA; torch is not installed", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print(
                "bench/gpu_memory.py measures torch.cuda.max_memory_allocated and needs a CUDA GPU; "
                "none is visible here (torch.cuda.is_available() is False). Use --dry-run for the predictions alone.",
                file=sys.stderr,
            )
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        memory = torch.cuda.get_device_properties(0).total_memory / GIB
        attention, device = args.attention, torch.cuda.get_device_name(0)

    print(f"device: {device}; attention: {attention}; target: every prediction within {TARGET:.0%}")
    unit = "MiB" if args.cpu else "GiB"
    scale = 1024 if args.cpu else 1
    header = f"{'case':<40} {'predicted ' + unit:>13} {'measured ' + unit:>13} {'error':>8}  verdict"
    print(header)
    print("-" * len(header))
    rows, worst, misses = [], 0.0, 0
    for case in cases:
        predicted = predict(case, memory, case.attention or attention)
        measured = None if args.dry_run else measure_case(case, case.attention or attention)
        if isinstance(measured, float):
            error = (predicted - measured) / measured
            worst = max(worst, abs(error))
            verdict = "ok" if abs(error) <= TARGET else ("over" if error > 0 else "UNDER")
            misses += verdict != "ok"
            print(f"{case.name:<40} {predicted * scale:>13.2f} {measured * scale:>13.2f} {error:>+8.1%}  {verdict}")
        else:
            error = None
            print(f"{case.name:<40} {predicted * scale:>13.2f} {measured or '-':>13} {'':>8}")
        rows.append({"case": case.name, "predicted_gib": round(predicted, 3),
                     "measured_gib": measured if not isinstance(measured, float) else round(measured, 3),
                     "error": None if error is None else round(error, 4)})
    if not args.dry_run:
        print(f"\nworst |error| {worst:.1%}; {misses} of {len(cases)} outside {TARGET:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "attention": attention, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
