"""Our training loop against a plain hand-written PyTorch loop and Hugging Face Trainer,
side by side in one run on the same tiny ESM-2 model and data; then checkpoint save
throughput against torch.save (bench/checkpoint_save.py).

    python bench/train_loop.py                 # 60 timed steps each, best of 3 interleaved rounds, 256 MiB checkpoint
    python bench/train_loop.py --steps 20 --mb 64

All three train the --tiny esm2-mlm model (2 layers, hidden 32) with Adam on the
same generated proteins and the same masked micro-batches (a 1,024-token global
batch, split as the planner says; printed), in fp32 on CPU, 1 thread by default,
deterministic algorithms on (as helixrun trains; the plain loop is also shown
with them off). Our loop runs as `helixrun-train --tiny` does (metrics server,
metrics.jsonl, TensorBoard, progress log), with checkpoints and evaluation moved
out of the timed window. Step time = median wall time between consecutive step
ends, after 10 warm-up steps. Ratios > 1 mean slower than the baseline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

WARMUP = 10


def config(workdir: Path, steps: int):
    from helixrun_trainer import cli

    args = argparse.Namespace(file=ROOT / "examples" / "run-esm2.yaml", workdir=workdir, tiny=True, pools=None,
                              set=[f"training.maxSteps={steps}", "checkpointing.everySteps=100000",
                                   "evaluation.everySteps=100000", "training.globalBatch.tokens=1024"])
    return cli.local_config(args)


def median_step(ends: list[float]) -> float:
    gaps = [b - a for a, b in zip(ends, ends[1:])][WARMUP:]
    return statistics.median(gaps)


def ours(cfg) -> float:
    from helixrun_trainer.loop import Trainer

    ends: list[float] = []

    class Timed(Trainer):
        def _export_step(self, record, dt, progress):
            super()._export_step(record, dt, progress)
            ends.append(time.perf_counter())

    Timed(cfg, metrics_port=0).run()
    return median_step(ends)


def same_batches(cfg, steps: int):
    """The micro-batches our loop trains on, collated the same way (for the baselines)."""
    from helixrun_trainer.data import BatchOrder, StepBatches
    from helixrun_trainer.recipes import get_recipe

    recipe = get_recipe("esm2-mlm")
    data = recipe.build_data(cfg, True, Path(cfg.paths.data))
    order = BatchOrder(len(data.train), 42, lengths=data.lengths, max_tokens=cfg.plan.micro_batch_tokens)
    sb = StepBatches(order, data.train, data.collate, seed=42, grad_accum=cfg.plan.grad_accum, world_size=1, rank=0)
    return recipe, data, sb


def plain(cfg, steps: int) -> float:
    recipe, data, sb = same_batches(cfg, steps)
    torch.manual_seed(42)
    model = recipe.build_model(cfg, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=4e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, foreach=False)
    model.train()
    ends = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        units = 0
        for batch, _ in sb.for_step(step):
            out = model(**batch)
            n = int((batch["labels"] != -100).sum())
            (out.loss * n).backward()
            units += n
        for p in params:
            p.grad.div_(units)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ends.append(time.perf_counter())
    return median_step(ends)


def hf_trainer(cfg, steps: int, workdir: Path) -> float:
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments

    recipe, data, sb = same_batches(cfg, steps)
    # HF batches by sample count: the same micro-batches, fed one list per item.
    micro = [ref for s in range(steps) for ref in (sb.order.at(sb.global_index(s, a)) for a in range(sb.grad_accum))]
    gen = torch.Generator().manual_seed(0)

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(micro)

        def __getitem__(self, i):
            return [data.train[j] for j in micro[i].indices]

    def collate(items):
        return data.collate(items[0], gen)

    torch.manual_seed(42)
    model = recipe.build_model(cfg, True)
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(workdir / "hf"), per_device_train_batch_size=1,
                             gradient_accumulation_steps=sb.grad_accum, max_steps=steps, learning_rate=4e-4,
                             adam_beta2=0.98, weight_decay=0.01, max_grad_norm=1.0, logging_steps=10**6,
                             save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                             disable_tqdm=True, seed=42)
    HFTrainer(model=model, args=args, train_dataset=Batches(), data_collator=collate,
              callbacks=[Clock()]).train()
    return median_step(ends)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--mb", type=int, default=256, help="checkpoint size for the save benchmark")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round's median counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = p.parse_args()
    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    steps = args.steps + WARMUP + 1
    from helixrun_trainer.state import set_deterministic

    times: dict[str, list[float]] = {"plain (non-deterministic)": [], "plain": [], "ours": [], "hf": []}
    for r in range(args.rounds):  # interleaved, so load from other processes hits all three alike
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cfg = config(tmp / "run", steps)
            torch.use_deterministic_algorithms(False)
            times["plain (non-deterministic)"].append(plain(cfg, steps))
            set_deterministic()  # what our loop runs with (bitwise resume); the rest run with it too
            times["plain"].append(plain(cfg, steps))
            times["ours"].append(ours(cfg))
            times["hf"].append(hf_trainer(cfg, steps, tmp))
    t_plain, t_ours, t_hf = (min(times[k]) for k in ("plain", "ours", "hf"))
    print(f"training step, tiny esm2-mlm, {cfg.plan.grad_accum} micro-batch(es)/step of <= "
          f"{cfg.plan.micro_batch_tokens} tokens, {torch.get_num_threads()} thread(s), "
          f"best of {args.rounds} rounds of the median of {args.steps} steps:")
    t_nd = min(times["plain (non-deterministic)"])
    print(f"  plain PyTorch loop, torch.use_deterministic_algorithms off {t_nd * 1000:8.2f} ms "
          f"(deterministic/off: {t_plain / t_nd:.2f}x)")
    print("  all below with deterministic algorithms on, as helixrun trains:")
    print(f"  plain PyTorch loop   {t_plain * 1000:8.2f} ms")
    print(f"  helixrun loop        {t_ours * 1000:8.2f} ms   ratio vs plain {t_ours / t_plain:.2f}x")
    print(f"  Hugging Face Trainer {t_hf * 1000:8.2f} ms   ratio vs plain {t_hf / t_plain:.2f}x")
    print(f"  helixrun / HF Trainer: {t_ours / t_hf:.2f}x")
    from checkpoint_save import measure, report

    print("\n".join(report(measure(args.mb, 3))))


if __name__ == "__main__":
    main()
