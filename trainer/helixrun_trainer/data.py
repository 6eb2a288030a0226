"""Batch order: which samples form each micro-batch, as a pure function of (seed, epoch).

An epoch is a fixed list of micro-batches (token-budget batches à la
fairseq/ESM: sort by length, flush when the padded size would pass the budget;
or fixed-size sample batches), shuffled per epoch by (seed, epoch), or in
ascending length every epoch where a recipe's reference trains so. The stream
of micro-batches runs across epoch boundaries without dropping any. The data
position is one counter, the global micro-batch index g: step s on rank r,
accumulation slot a, reads g = (s * accum + a) * world + r. Resuming at step s
therefore needs only s (plus a check that world, accum and the batch list are
the same), and every random draw in collate is seeded from (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_samples: int | None = None) -> list[list[int]]:
    """Group indices so that len(batch) * longest <= max_tokens; a sequence longer than the budget
    gets a batch of its own (never dropped). Sorted by length, ties by index (deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        too_many = max_samples is not None and len(current) >= max_samples
        if current and (longest_if_added * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def sample_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Fixed-size batches of a seeded permutation (the last one may be short, never dropped)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class MicroBatchRef:
    epoch: int
    position: int  # index of the batch in the epoch's shuffled order
    indices: list[int]

    def generator(self, seed: int, stream: str) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(seed, stream, self.epoch, self.position))


class BatchOrder:
    """The epoch's micro-batches and their order; stateless apart from what (seed, epoch) determines."""

    def __init__(self, num_samples: int, seed: int, *, lengths: Sequence[int] | None = None,
                 max_tokens: int | None = None, batch_size: int = 1, length_sorted: bool = False):
        if num_samples == 0:
            raise ValueError("the training set is empty")
        self.seed = seed
        self.length_sorted = length_sorted and lengths is not None  # shortest batch first, every epoch alike
        if lengths is not None and max_tokens:
            self.batches = token_budget_batches(lengths, max_tokens)
            self.shuffle_batches = True
        elif self.length_sorted:
            order = sorted(range(num_samples), key=lambda i: (lengths[i], i))
            self.batches = [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]
        else:
            self.batches = None  # re-drawn per epoch: a new permutation each epoch
            self.num_samples, self.batch_size = num_samples, batch_size
            self.shuffle_batches = False
        self._cache: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        if self.batches is not None:
            return len(self.batches)
        return -(-self.num_samples // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        if self.length_sorted:
            out = self.batches
        elif self.batches is not None:
            perm = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch)))
            out = [self.batches[i] for i in perm.tolist()]
        else:
            out = sample_batches(self.num_samples, self.batch_size, mix_seed(self.seed, "epoch", epoch))
        self._cache = (epoch, out)
        return out

    def at(self, global_index: int) -> MicroBatchRef:
        epoch, position = divmod(global_index, len(self))
        return MicroBatchRef(epoch, position, self.epoch_batches(epoch)[position])

    def fingerprint(self) -> str:
        """Changes when the batch list would differ (data, budget, batch size, seed)."""
        payload = repr((self.seed, self.batches if self.batches is not None else (self.num_samples, self.batch_size),
                        *(("length-sorted",) if self.length_sorted else ())))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StepBatches:
    """The micro-batches of each optimizer step for this rank: the data position is the step."""

    def __init__(self, order: BatchOrder, dataset: Sequence[Any], collate: Callable, *, seed: int,
                 grad_accum: int, world_size: int, rank: int):
        self.order, self.dataset, self.collate = order, dataset, collate
        self.seed, self.grad_accum, self.world_size, self.rank = seed, grad_accum, world_size, rank

    def global_index(self, step: int, slot: int) -> int:
        return (step * self.grad_accum + slot) * self.world_size + self.rank

    def epoch_of(self, step: int) -> int:
        return self.global_index(step, 0) // len(self.order)

    def steps_per_epoch(self) -> float:
        return len(self.order) / (self.grad_accum * self.world_size)

    def for_step(self, step: int) -> Iterator[tuple[Any, torch.Generator]]:
        """(batch, loss generator) per accumulation slot of `step` on this rank."""
        for slot in range(self.grad_accum):
            ref = self.order.at(self.global_index(step, slot))
            samples = [self.dataset[i] for i in ref.indices]
            batch = self.collate(samples, ref.generator(self.seed, "collate"))
            yield batch, ref.generator(self.seed, "loss")

    def state_dict(self, step: int) -> dict:
        return {"step": step, "epoch": self.epoch_of(step), "next_global_index": self.global_index(step, 0),
                "grad_accum": self.grad_accum, "world_size": self.world_size,
                "batches_per_epoch": len(self.order), "fingerprint": self.order.fingerprint()}

    def check_state(self, state: dict) -> list[str]:
        """Differences that make a resume inexact (the run continues, with a warning)."""
        mine = self.state_dict(state.get("step", 0))
        return [f"{k}: checkpoint {state.get(k)!r}, now {mine[k]!r}"
                for k in ("grad_accum", "world_size", "batches_per_epoch", "fingerprint") if state.get(k) != mine[k]]


class Prefetch:
    """Collates step s+1's micro-batches on a background thread while step s trains (pinned for a GPU).

    Safe for exact resume because collate draws only from its per-batch generator: the thread changes when
    a batch is built, never what it contains."""

    def __init__(self, batches: StepBatches, *, last_step: int, pin_memory: bool = False):
        from concurrent.futures import ThreadPoolExecutor

        self.batches, self.last_step, self.pin = batches, last_step, pin_memory
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.ahead: tuple[int, Any] | None = None

    def _load(self, step: int) -> list[tuple[Any, torch.Generator]]:
        items = list(self.batches.for_step(step))
        if self.pin:
            items = [(pin(batch), gen) for batch, gen in items]
        return items

    def for_step(self, step: int) -> list[tuple[Any, torch.Generator]]:
        if self.ahead is not None and self.ahead[0] == step:
            items = self.ahead[1].result()
        else:
            items = self._load(step)
        self.ahead = (step + 1, self.pool.submit(self._load, step + 1)) if step + 1 < self.last_step else None
        return items

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def pin(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: pin(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(pin(v) for v in batch)
    return batch


def eval_batches(dataset: Sequence[Any], collate: Callable, *, seed: int, lengths: Sequence[int] | None,
                 max_tokens: int | None, batch_size: int) -> Iterator[Any]:
    """The eval set in a fixed order with fixed draws: the same batches at every evaluation."""
    if lengths is not None and max_tokens:
        groups = token_budget_batches(lengths, max_tokens)
    else:
        groups = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    for position, indices in enumerate(groups):
        gen = torch.Generator().manual_seed(mix_seed(seed, "eval", position))
        yield collate([dataset[i] for i in indices], gen)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
