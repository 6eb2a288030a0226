"""Stage 1 of the seed's pipeline: ESM-2 embeddings precomputed into HDF5.

    <dir>/{train,val,test}_embeddings[.rank<r>of<w>].h5    one float16 dataset per sequence, [L+2, esm_dim]
    <dir>/{split}_embeddings.done.<r>of<w>                   a rank's share is complete

Each rank embeds every world-th sequence of a split (by position in the split)
into its own file, skipping keys already written, so a killed job resumes where
it stopped; a split whose every rank wrote its `.done` marker is skipped whole.
Files are keyed by the sequence's unique id; the dataset also stores the
sequence's SHA-1 so a changed data set is caught instead of silently reused.

What this buys and costs. It saves the frozen ESM-2 650M forward in every
training step (roughly half the step time at d 768 on the seed's A800s), at
~2.5 KB per residue on disk (1280 x fp16), e.g. ~250 GB for 100k sequences of
1,000 residues. But the embeddings are computed from the **unmasked**
sequence: every masked-LM target is visible to the model through the ESM
branch, so the MLM loss and perplexity it reaches are not the task's (see
tests/recipes/test_ptm_mamba.py::test_precomputed_embeddings_leak_masked_residues).
The official PTM-Mamba recomputes ESM on the masked input every step; so does
our default, `options.esmEmbeddings: on-the-fly`. Use `precomputed` only for
frozen-feature tasks where nothing is masked.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from helixrun_trainer.recipes.ptm_mamba import vocab

log = logging.getLogger(__name__)


def shard_path(directory: Path, split: str, rank: int, world: int) -> Path:
    suffix = "" if world == 1 else f".rank{rank}of{world}"
    return Path(directory) / f"{split}_embeddings{suffix}.h5"


def done_path(directory: Path, split: str, rank: int, world: int) -> Path:
    return Path(directory) / f"{split}_embeddings.done.{rank}of{world}"


def sequence_digest(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


def missing_marker(directory: Path, split: str) -> Path | None:
    """A `.done` marker the split still lacks (a pattern when no rank has finished), or None when complete."""
    markers = list(Path(directory).glob(f"{split}_embeddings.done.*of*"))
    if not markers:
        return Path(directory) / f"{split}_embeddings.done.*"
    world = int(markers[0].name.rsplit("of", 1)[1])
    for rank in range(world):
        marker = done_path(directory, split, rank, world)
        if not marker.exists():
            return marker
    return None


def split_complete(directory: Path, split: str) -> bool:
    return missing_marker(directory, split) is None


@torch.no_grad()
def precompute_split(model, records: list[tuple[str, str]], directory: Path, split: str, *, rank: int = 0,
                     world: int = 1, batch_size: int = 8, device: str | torch.device = "cpu") -> int:
    """Embed this rank's share of `records` [(unique_id, sequence)] with `model.esm_states`; returns how many
    were written now (0 when already complete)."""
    import h5py

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker = done_path(directory, split, rank, world)
    if marker.exists():
        return 0
    mine = records[rank::world]
    written = 0
    with h5py.File(shard_path(directory, split, rank, world), "a") as h5:
        todo = [(uid, seq) for uid, seq in mine if uid not in h5]
        if len(todo) < len(mine):
            log.info("%s: resuming, %d of %d already embedded", split, len(mine) - len(todo), len(mine))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            encoded = [vocab.encode(seq) for _, seq in chunk]
            width = max(len(ids) for ids in encoded)
            ids = torch.full((len(chunk), width), vocab.PAD, dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, :len(e)] = torch.tensor(e)
            mask = (ids != vocab.PAD).long()
            states = model.esm_states(ids.to(device), mask.to(device)).cpu().to(torch.float16)
            for row, (uid, seq) in enumerate(chunk):
                dataset = h5.create_dataset(uid, data=states[row, :len(encoded[row])].numpy())
                dataset.attrs["sha1"] = sequence_digest(seq)
            h5.flush()
            written += len(chunk)
    marker.write_text(f"{len(mine)}\n")
    return written


class EmbeddingStore:
    """Read side: the precomputed embedding of a sequence by unique id, from whichever split/shard holds it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._files = None
        self._index: dict[str, int] = {}

    def _open(self):
        import h5py

        if self._files is None:
            paths = sorted(self.directory.glob("*_embeddings*.h5"))
            self._files = [h5py.File(p, "r") for p in paths]
            for i, f in enumerate(self._files):
                for key in f.keys():
                    self._index[key] = i
        return self._files

    def get(self, uid: str, sequence: str) -> torch.Tensor:
        files = self._open()
        if uid not in self._index:
            raise KeyError(f"{self.directory}: no precomputed embedding for {uid!r}")
        dataset = files[self._index[uid]][uid]
        if dataset.attrs.get("sha1") != sequence_digest(sequence):
            raise ValueError(f"{self.directory}: the embedding of {uid!r} was computed from another sequence")
        return torch.from_numpy(dataset[()]).float()

    def __getstate__(self):  # picklable for DataLoader workers: reopen lazily
        return {"directory": self.directory, "_files": None, "_index": {}}


def precompute_all(model, splits: dict[str, list[tuple[str, str]]], directory: Path, *, rank: int, world: int,
                   batch_size: int, device) -> dict[str, int]:
    out = {}
    for split, records in splits.items():
        if split_complete(directory, split):
            log.info("%s embeddings complete in %s: skipped", split, directory)
            out[split] = 0
            continue
        out[split] = precompute_split(model, records, directory, split, rank=rank, world=world,
                                      batch_size=batch_size, device=device)
    return out
