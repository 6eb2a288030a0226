"""Checkpoint save throughput: our CheckpointManager against a plain torch.save of the same bytes.

    python bench/checkpoint_save.py              # 512 MB of fp32 tensors, 3 repeats
    python bench/checkpoint_save.py --mb 64      # quick look

Ours writes `.part` files, hashes them while writing (sha256 for the manifest),
fsyncs files and folders, renames, and writes manifest + COMPLETE; torch.save
writes one file and returns (no fsync: the page cache absorbs it). Both are
timed to the moment the call returns, and also with an explicit fsync after
torch.save, which is the fair durable comparison. The async mode's blocking
part (CPU snapshot only) is shown too. Prints MB/s and ratios (ours / plain).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch  # noqa: E402

from helixrun_trainer.checkpoint import CheckpointManager  # noqa: E402
from helixrun_trainer.distributed import DistEnv  # noqa: E402


def make_state(mb: int) -> dict:
    per = 16 << 20  # 16 MiB tensors, like a transformer's large matrices
    n = max(1, (mb << 20) // per)
    gen = torch.Generator().manual_seed(0)
    return {"model": {f"layer{i}.weight": torch.randn(per // 4, generator=gen) for i in range(n)}}


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state["model"].values())


def measure(mb: int = 512, repeats: int = 3, folder: str | None = None) -> dict:
    state = make_state(mb)
    nbytes = state_bytes(state)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=folder))
    results: dict[str, list[float]] = {"plain torch.save": [], "plain torch.save + fsync": [], "ours (sync)": [],
                                       "ours (async, blocking part)": []}
    try:
        for r in range(-1, repeats):  # round -1 warms the allocator and page cache; not counted
            path = root / f"plain-{r}.pt"
            t0 = time.perf_counter()
            torch.save(state, path)
            results["plain torch.save"].append(time.perf_counter() - t0)
            path.unlink()
            t0 = time.perf_counter()
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            results["plain torch.save + fsync"].append(time.perf_counter() - t0)
            path.unlink()

            sync = CheckpointManager(root / "ours", DistEnv(), keep_last=1)
            t0 = time.perf_counter()
            sync.save(r + 2, shared=lambda: state, part={}, metrics={})
            results["ours (sync)"].append(time.perf_counter() - t0)

            asynchronous = CheckpointManager(root / "ours-async", DistEnv(), keep_last=1, async_save=True)
            t0 = time.perf_counter()
            asynchronous.save(r + 2, shared=lambda: state, part={}, metrics={})
            results["ours (async, blocking part)"].append(time.perf_counter() - t0)
            asynchronous.wait()
            if r < 0:
                for v in results.values():
                    v.clear()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"bytes": nbytes, "seconds": {k: statistics.median(v) for k, v in results.items()}}


def report(result: dict) -> list[str]:
    mb = result["bytes"] / 2**20
    s = result["seconds"]
    lines = [f"checkpoint save, {mb:.0f} MiB (median of repeats):"]
    for name, secs in s.items():
        lines.append(f"  {name:30s} {secs:8.3f} s  {mb / secs:9.1f} MiB/s")
    lines.append(f"  ratio ours(sync)/torch.save time: {s['ours (sync)'] / s['plain torch.save']:.2f}x; "
                 f"vs torch.save+fsync: {s['ours (sync)'] / s['plain torch.save + fsync']:.2f}x; "
                 f"async blocking / torch.save: {s['ours (async, blocking part)'] / s['plain torch.save']:.2f}x")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: the system temp folder)")
    args = p.parse_args()
    print("\n".join(report(measure(args.mb, args.repeats, args.dir))))


if __name__ == "__main__":
    main()
