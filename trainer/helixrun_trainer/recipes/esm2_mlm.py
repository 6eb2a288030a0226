"""ESM-2 masked-language-model training on protein FASTA.

Model: EsmForMaskedLM of spec.model.name's architecture, from fresh weights
(model.init scratch: pretraining, the default) or from the released weights
(model.init pretrained); tiny: a 2-layer rotary ESM of the same architecture.
Tokens: the 33-letter ESM alphabet, built locally. Objective: ESM/BERT masking,
15% of residues (model.options.maskProbability), of which 80% <mask>, 10% a
token drawn uniformly from the whole alphabet (the paper's "random token", as
BioNeMo's default all_tokens strategy and Hugging Face's collator draw it), 10%
unchanged; the loss is the mean cross-entropy over masked positions, so a
micro-batch weighs by its masked-token count. Sequences longer than
data.maxSequenceLength (with <cls>/<eos>) are cropped at a random window, as
ESM-2 was trained.

Data: data.path is a protein FASTA. With data.options.clusters (a cluster
membership file, below) the run samples as ESM-2 did: every epoch visits each
UniRef50 training cluster once and trains on one of its UniRef90 members drawn
uniformly (from the runtime's generator, so a resumed run draws the same); the
FASTA holds the UniRef90 sequences, keyed by the member ids. Without it every
FASTA record is one training sample per epoch.

Cluster membership file: plain text or gzip, one membership per line, two
whitespace-separated columns: the cluster id and the id of a member's FASTA
record (`UniRef50_A0A1 UniRef90_A0A1`). Blank lines and lines starting with `#`
are skipped; a cluster's lines need not be adjacent; list a cluster's
representative first (its held-out sample). From UniProt's
idmapping_selected.tab: `cut -f9,10 | sort -u` gives UniRef90 -> UniRef50;
swap the columns. A member missing from the FASTA, a line without two columns or
a member listed in two clusters is a DataError naming the file and line.

Evaluation: loss and perplexity over the held-out split: records (or clusters,
by cluster id; then the first-listed member of each) whose id hashes into the
first `evalFraction` of the space, 1% by default, the same split every run.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from helixrun_trainer.errors import DataError
from helixrun_trainer.files import write_atomically
from helixrun_trainer.recipes.base import (LossOutput, RecipeBase, RecipeData, in_eval_split, on_data_volume,
                                          resolve_data_path)
from helixrun_trainer.recipes.weights import load_main_model

# facebook/esm2_* vocab.txt, in id order.
ESM_ALPHABET = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
TOKEN_ID = {t: i for i, t in enumerate(ESM_ALPHABET)}


def tokenizer(workdir: Path | None = None):
    """An EsmTokenizer for the ESM alphabet, from a vocab file written locally (nothing is downloaded)."""
    from transformers import EsmTokenizer

    folder = Path(workdir or tempfile.mkdtemp(prefix="esm-vocab-"))
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(ESM_ALPHABET) + "\n")
    return EsmTokenizer(vocab_file=str(vocab))


def encode(sequence: str) -> list[int]:
    """Residues -> ids with <cls> ... <eos> (what EsmTokenizer gives for a plain sequence)."""
    return [CLS, *(TOKEN_ID.get(c, UNK) for c in sequence), EOS]


# Residue letters -> token ids in one bytes.translate pass (unknown letters -> <unk>).
_TRANSLATE = bytes(TOKEN_ID.get(chr(b), UNK) if chr(b).isalpha() or chr(b) in ".-" else UNK for b in range(256))


class TokenStore:
    """Every sequence's ids (with <cls>/<eos>) in one uint8 array plus int64 offsets: one byte per residue,
    so a UniRef50-sized set fits in memory (Python int lists would take ~30x more). Items are uint8 arrays."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def build(cls) -> "TokenStore._Builder":
        return cls._Builder()

    class _Builder:
        def __init__(self):
            self.buffer, self.offsets = bytearray(), [0]

        def add(self, sequence: str) -> None:
            self.buffer.append(CLS)
            self.buffer += sequence.encode("ascii", "replace").translate(_TRANSLATE)
            self.buffer.append(EOS)
            self.offsets.append(len(self.buffer))

        def add_ids(self, ids: np.ndarray) -> None:
            self.buffer += ids.tobytes()
            self.offsets.append(len(self.buffer))

        def done(self) -> "TokenStore":
            return TokenStore(np.frombuffer(bytes(self.buffer), dtype=np.uint8), np.asarray(self.offsets, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self, cap: int) -> list[int]:
        return np.minimum(np.diff(self.offsets), cap).tolist()


# The tiny proteins' residues: a low-complexity composition the tiny model picks up within a --tiny run (over
# all 20 residues, 40 steps end near perplexity 17 at any learning rate: the motifs need longer to learn).
TINY_RESIDUES = "LAGVS"


def tiny_sequences(seed: int, n: int = 384, min_len: int = 12, max_len: int = 90) -> list[tuple[str, str]]:
    """Random low-complexity proteins with repeated motifs: a signal the tiny model learns within a --tiny run."""
    rng = random.Random(seed)
    motifs = ["".join(rng.choice(TINY_RESIDUES) for _ in range(5)) for _ in range(8)]
    out = []
    for i in range(n):
        length = rng.randint(min_len, max_len)
        seq = ""
        while len(seq) < length:
            seq += rng.choice(motifs) if rng.random() < 0.6 else rng.choice(TINY_RESIDUES)
        out.append((f"tiny_{i:05d}", seq[:length]))
    return out


def tiny_clusters(sequences: list[tuple[str, str]], seed: int) -> str:
    """A membership file grouping the tiny proteins into clusters of 1 to 3 consecutive records."""
    rng = random.Random(seed)
    lines, i = [], 0
    while i < len(sequences):
        size = rng.randint(1, 3)
        lines += [f"cluster_{i:05d}\t{rid}" for rid, _ in sequences[i:i + size]]
        i += size
    return "\n".join(lines) + "\n"


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, generator: torch.Generator, probability: float):
    """(input_ids, labels) with 80/10/10 masking of non-special positions (the random 10% drawn uniformly from
    all 33 tokens); at least one per sequence."""
    labels = ids.clone()
    draw = torch.rand(ids.shape, generator=generator)
    selected = (draw < probability) & ~special
    # A sequence with no selected position still gets one (a loss with zero units would be undefined).
    for row in range(ids.shape[0]):
        if not selected[row].any():
            candidates = (~special[row]).nonzero().flatten()
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
            selected[row, pick] = True
    labels[~selected] = -100
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(len(ESM_ALPHABET), ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[selected & (action < 0.8)] = MASK
    swap = selected & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


class Cluster:
    """One UniRef50 cluster as a training sample: its UniRef90 members' token arrays, one drawn per visit."""

    def __init__(self, store: "TokenStore", members: np.ndarray):
        self.store, self.members = store, members

    def draw(self, generator: torch.Generator) -> np.ndarray:
        return self.store[int(self.members[int(torch.randint(len(self.members), (1,), generator=generator))])]


class ClusterSamples:
    """Map-style training set of clusters: item i is cluster i (its members: a slice of one index array)."""

    def __init__(self, store: "TokenStore", members: np.ndarray, offsets: np.ndarray):
        self.store, self.members, self.offsets = store, members, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Cluster:
        return Cluster(self.store, self.members[self.offsets[i]:self.offsets[i + 1]])

    def lengths(self, cap: int) -> list[int]:
        """A cluster's longest member (capped): token budgets hold whichever member is drawn."""
        sizes = np.minimum(np.diff(self.store.offsets)[self.members], cap)
        return np.maximum.reduceat(sizes, self.offsets[:-1]).tolist() if len(self) else []


class Collate:
    def __init__(self, max_length: int, mask_probability: float):
        self.max_length, self.p = max_length, mask_probability

    def __call__(self, samples: list, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cropped = []
        for ids in samples:
            if isinstance(ids, Cluster):  # the member first, then its crop and masks: one generator, fixed order
                ids = ids.draw(generator)
            if len(ids) > self.max_length:  # random window, drawn from the runtime's generator
                start = int(torch.randint(len(ids) - self.max_length + 1, (1,), generator=generator))
                ids = ids[start:start + self.max_length]
            cropped.append(ids)
        width = max(len(ids) for ids in cropped)
        batch = torch.full((len(cropped), width), PAD, dtype=torch.long)
        for row, ids in enumerate(cropped):
            batch[row, :len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        attention = (batch != PAD).long()
        special = (batch == CLS) | (batch == EOS) | (batch == PAD)
        inputs, labels = mask_tokens(batch, special, generator, self.p)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def read_clusters(path: Path, member_index: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(cluster ids in first-seen order, member record indices grouped by cluster, offsets) from a membership
    file; each cluster's members keep their file order."""
    import gzip

    if not path.is_file():
        raise DataError(f"data.options.clusters: {path} does not exist")
    cluster_of: dict[str, int] = {}
    cluster_column, member_column, seen = [], [], {}
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise DataError(f"{path}:{line_no}: expected two columns (cluster id, member id), got {len(fields)}")
            cluster, member = fields
            if member not in member_index:
                raise DataError(f"{path}:{line_no}: member {member!r} of cluster {cluster!r} is not a record of the "
                                f"FASTA (data.path)")
            if member in seen:
                raise DataError(f"{path}:{line_no}: member {member!r} is already in cluster {seen[member]!r}")
            seen[member] = cluster
            cluster_column.append(cluster_of.setdefault(cluster, len(cluster_of)))
            member_column.append(member_index[member])
    if not cluster_of:
        raise DataError(f"{path}: no cluster memberships")
    order = np.argsort(np.asarray(cluster_column, np.int64), kind="stable")
    offsets = np.searchsorted(np.asarray(cluster_column, np.int64)[order], np.arange(len(cluster_of) + 1))
    return list(cluster_of), np.asarray(member_column, np.int64)[order], offsets


def cluster_data(path: Path, clusters_path: Path, eval_fraction: float, max_length: int, collate: Collate) -> RecipeData:
    """Training samples are UniRef50 clusters (a UniRef90 member drawn per visit); held-out clusters (by cluster id)
    evaluate on their first-listed member."""
    from helixrun_trainer.formats.fasta import PROTEIN, FastaError, read_fasta

    store, member_index = TokenStore.build(), {}
    try:
        for record in read_fasta(path, alphabet=PROTEIN):
            member_index[record.id] = len(member_index)
            store.add(record.sequence)
    except FastaError as exc:
        raise DataError(str(exc)) from exc
    store = store.done()
    ids, members, offsets = read_clusters(clusters_path, member_index)
    held_out = np.fromiter((in_eval_split(c, eval_fraction) for c in ids), bool, len(ids))
    train_members, train_offsets = [], [0]
    evals = TokenStore.build()
    for i in range(len(ids)):
        cluster = members[offsets[i]:offsets[i + 1]]
        if held_out[i]:
            evals.add_ids(store[int(cluster[0])])
        else:
            train_members.append(cluster)
            train_offsets.append(train_offsets[-1] + len(cluster))
    if len(train_offsets) == 1:
        raise DataError(f"{clusters_path}: no training clusters")
    train = ClusterSamples(store, np.concatenate(train_members), np.asarray(train_offsets, np.int64))
    evals = evals.done()
    return RecipeData(
        train=train, eval=evals if len(evals) else None, collate=collate,
        lengths=train.lengths(max_length), eval_lengths=evals.lengths(max_length),
        split_mapping={"rule": f"blake2b-64(cluster id) / 2**64 < {eval_fraction} -> eval (first-listed member)",
                       "source": str(path), "clusters": str(clusters_path), "sequences": len(store),
                       "train_clusters": len(train), "eval_clusters": len(evals),
                       **({"eval_cluster_ids": [c for c, h in zip(ids, held_out) if h]}
                          if held_out.sum() <= 10000 else {})},
    )


class Esm2MLM(RecipeBase):
    name = "esm2-mlm"

    def build_model(self, cfg, tiny: bool) -> torch.nn.Module:
        from transformers import EsmConfig, EsmForMaskedLM

        if tiny:
            config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, position_embedding_type="rotary", token_dropout=True,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # as facebook/esm2_*
                               pad_token_id=PAD, mask_token_id=MASK, max_position_embeddings=1026)
            model = EsmForMaskedLM(config)
        else:
            model = load_main_model(EsmForMaskedLM, cfg, dtype=torch.float32)
        # The contact head is not part of the MLM loss (ESM fits it afterwards): frozen, so DDP finds no unused grads.
        model.esm.contact_head.requires_grad_(False)
        return model

    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        from helixrun_trainer.formats.fasta import PROTEIN, FastaError, read_fasta, write_fasta

        spec = cfg.spec
        options = (spec.get("model") or {}).get("options") or {}
        data_opts = (spec.get("data") or {}).get("options") or {}
        max_length = (spec.get("data") or {}).get("maxSequenceLength") or 1024
        eval_fraction = float(data_opts.get("evalFraction", 0.1 if tiny else 0.01))
        seed = (spec.get("training") or {}).get("seed", 42)
        clusters = None
        if tiny:
            path = Path(data_dir) / "tiny-esm2.fasta"
            path.parent.mkdir(parents=True, exist_ok=True)
            sequences = tiny_sequences(seed)
            # Every rank writes the same file: atomically, so no rank ever reads one another rank is rewriting.
            write_atomically(path, lambda staging: write_fasta(sequences, staging))
            if data_opts.get("clusters"):  # a run sampling clusters gets generated ones
                clusters = Path(data_dir) / "tiny-esm2-clusters.tsv"
                write_atomically(clusters, lambda staging: staging.write_text(tiny_clusters(sequences, seed)))
        else:
            path = resolve_data_path(cfg, data_dir)
            if not path.is_file():
                raise DataError(f"data.path: {path} does not exist")
            if data_opts.get("clusters"):
                clusters = on_data_volume(data_opts["clusters"], data_dir)
        collate = Collate(max_length, float(options.get("maskProbability", 0.15)))
        if clusters is not None:
            return cluster_data(path, clusters, eval_fraction, max_length, collate)
        train, evals, eval_ids = TokenStore.build(), TokenStore.build(), []
        try:
            for record in read_fasta(path, alphabet=PROTEIN):
                if in_eval_split(record.id, eval_fraction):
                    evals.add(record.sequence)
                    eval_ids.append(record.id)
                else:
                    train.add(record.sequence)
        except FastaError as exc:
            raise DataError(str(exc)) from exc
        train, evals = train.done(), evals.done()
        if not len(train):
            raise DataError(f"{path}: no training sequences")
        return RecipeData(
            train=train, eval=evals if len(evals) else None, collate=collate,
            lengths=train.lengths(max_length),
            eval_lengths=evals.lengths(max_length),
            split_mapping={"rule": f"blake2b-64(record id) / 2**64 < {eval_fraction} -> eval",
                           "source": str(path), "train": len(train), "eval": len(evals),
                           **({"eval_ids": eval_ids} if len(eval_ids) <= 10000 else {})},
        )

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        units = int((batch["labels"] != -100).sum())
        return LossOutput(loss=out.loss, loss_units=units, num_tokens=int(batch["attention_mask"].sum()),
                          num_samples=int(batch["input_ids"].shape[0]))

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        total, units = 0.0, 0
        for batch in eval_batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            n = int((batch["labels"] != -100).sum())
            total += float(out.loss.float()) * n
            units += n
        loss = total / max(units, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def export(self, model, cfg, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer(out_dir / ".vocab").save_pretrained(str(out_dir))


RECIPE = Esm2MLM()
