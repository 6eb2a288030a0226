"""Structure features for StructDiff: ESMFold once per sequence, cached on the volume by sequence hash.

Per residue (FEATURES = 12 values): pLDDT / 100; the Cα position relative to
the peptide's centroid (3, in nm); Cα distances to residues i±1, i±2, i±4
(6, in nm, 0 past the ends); the number of Cα within 8 Å (÷ 10); and a
relative position in [0, 1]. Computed from `EsmForProteinFolding` outputs
(atom37 positions, pLDDT) in the precompute stage only; training reads the
cache (`<cache>/<sha1[:2]>/<sha1>.pt`, one small tensor file per sequence,
written atomically), so restarts and later runs never fold again.

Tiny runs (and tests) use `fake_features`: deterministic from the sequence's
hash, a helix-like Cα trace with hashed pLDDT, the same shape as the real thing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Iterable

import torch

from helixrun_trainer.files import write_atomically

log = logging.getLogger(__name__)

FEATURES = 12
CA = 1  # atom37 index of the alpha carbon


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


def features_from_coordinates(ca: torch.Tensor, plddt: torch.Tensor) -> torch.Tensor:
    """[L, 3] Cα coordinates (Å) and [L] pLDDT (0..100) -> [L, FEATURES]."""
    length = ca.shape[0]
    ca = ca.float()
    centred = (ca - ca.mean(0, keepdim=True)) / 10.0
    dist = torch.cdist(ca, ca) / 10.0
    feats = [plddt.float().unsqueeze(1) / 100.0, centred]
    for offset in (-4, -2, -1, 1, 2, 4):
        idx = torch.arange(length) + offset
        valid = (idx >= 0) & (idx < length)
        col = torch.zeros(length)
        col[valid] = dist[torch.arange(length)[valid], idx[valid]]
        feats.append(col.unsqueeze(1))
    contacts = ((dist < 0.8).sum(1).float() - 1) / 10.0
    feats.append(contacts.unsqueeze(1))
    feats.append((torch.arange(length).float() / max(length - 1, 1)).unsqueeze(1))
    return torch.cat(feats, dim=1)


def fake_features(sequence: str) -> torch.Tensor:
    """Deterministic stand-in for ESMFold: an α-helix-like trace and hash-derived confidence."""
    digest = hashlib.sha256(sequence.encode()).digest()
    length = len(sequence)
    t = torch.arange(length, dtype=torch.float32)
    twist = 100.0 * math.pi / 180.0 * (1 + (digest[0] - 128) / 1024)
    ca = torch.stack([2.3 * torch.cos(t * twist), 2.3 * torch.sin(t * twist), 1.5 * t], dim=1)
    plddt = torch.tensor([50 + (digest[i % len(digest)] % 50) for i in range(length)], dtype=torch.float32)
    return features_from_coordinates(ca, plddt)


class StructureCache:
    """Features by sequence hash under `root`; `missing()` says which sequences still need folding."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sequence: str) -> Path:
        key = sequence_key(sequence)
        return self.root / key[:2] / f"{key}.pt"

    def get(self, sequence: str) -> torch.Tensor:
        path = self.path(sequence)
        if not path.exists():
            raise KeyError(f"no cached structure for {sequence[:20]}... in {self.root} (run the precompute stage)")
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, sequence: str, features: torch.Tensor) -> None:
        path = self.path(sequence)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda staging: torch.save(features.to(torch.float32).contiguous(), staging))

    def missing(self, sequences: Iterable[str]) -> list[str]:
        return sorted({s for s in sequences if not self.path(s).exists()})


def fold_missing(cache: StructureCache, sequences: list[str], folding_model: str, model_cache: str,
                 rank: int = 0, world: int = 1, batch_size: int = 8) -> int:
    """Run ESMFold on this rank's share of the sequences not yet cached (fp16 trunk, chunked attention)."""
    todo = cache.missing(sequences)[rank::world]
    if not todo:
        return 0
    if not torch.cuda.is_available():
        raise RuntimeError(f"{len(todo)} sequences need ESMFold structures and there is no GPU: precompute them "
                           f"on a GPU node (the cache {cache.root} is reused by every later run)")
    from transformers import AutoTokenizer, EsmForProteinFolding

    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    tokenizer = AutoTokenizer.from_pretrained(folding_model, cache_dir=model_cache)
    model = EsmForProteinFolding.from_pretrained(folding_model, cache_dir=model_cache).to(device).eval()
    model.esm = model.esm.half()
    model.trunk.set_chunk_size(128)
    log.info("folding %d sequences with %s", len(todo), folding_model)
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            inputs = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model(**inputs)
            positions = out.positions[-1]  # [B, L, 14, 3] (atom14), Cα is index 1 there too
            plddt = out.plddt  # [B, L, 37]
            for row, seq in enumerate(chunk):
                n = len(seq)
                cache.put(seq, features_from_coordinates(positions[row, :n, CA].cpu(), plddt[row, :n, CA].cpu() * 100
                                                         if plddt.max() <= 1.0 else plddt[row, :n, CA].cpu()))
    del model
    torch.cuda.empty_cache()
    return len(todo)
