"""ESM-2 masked-language-model training on protein FASTA.

Model: EsmForMaskedLM (production: from_pretrained(spec.model.name); tiny: a
2-layer rotary ESM of the same architecture). Tokens: the 33-letter ESM
alphabet, built locally. Objective: ESM/BERT masking, 15% of residues
(model.options.maskProbability), of which 80% <mask>, 10% a random residue, 10%
unchanged; the loss is the mean cross-entropy over masked positions, so a
micro-batch weighs by its masked-token count. Sequences longer than
data.maxSequenceLength (with <cls>/<eos>) are cropped at a random window, as
ESM-2 was trained. Evaluation: loss and perplexity over the held-out split
(records whose id hashes into the first `evalFraction` of the space, 1% by
default), the same split every run.
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
from helixrun_trainer.recipes.base import LossOutput, RecipeBase, RecipeData, in_eval_split, resolve_data_path

# facebook/esm2_* vocab.txt, in id order.
ESM_ALPHABET = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
RESIDUE_IDS = range(4, 24)  # the 20 standard amino acids: the random replacements
TOKEN_ID = {t: i for i, t in enumerate(ESM_ALPHABET)}
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


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

        def done(self) -> "TokenStore":
            return TokenStore(np.frombuffer(bytes(self.buffer), dtype=np.uint8), np.asarray(self.offsets, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self, cap: int) -> list[int]:
        return np.minimum(np.diff(self.offsets), cap).tolist()


def tiny_sequences(seed: int, n: int = 384, min_len: int = 12, max_len: int = 90) -> list[tuple[str, str]]:
    """Random proteins with a little structure (repeated motifs) so the tiny model has something to learn."""
    rng = random.Random(seed)
    motifs = ["".join(rng.choice(RESIDUES) for _ in range(5)) for _ in range(8)]
    out = []
    for i in range(n):
        length = rng.randint(min_len, max_len)
        seq = ""
        while len(seq) < length:
            seq += rng.choice(motifs) if rng.random() < 0.6 else rng.choice(RESIDUES)
        out.append((f"tiny_{i:05d}", seq[:length]))
    return out


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, generator: torch.Generator, probability: float):
    """(input_ids, labels) with 80/10/10 masking of non-special positions; at least one per sequence."""
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
    random_ids = torch.randint(RESIDUE_IDS.start, RESIDUE_IDS.stop, ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[selected & (action < 0.8)] = MASK
    swap = selected & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


class Collate:
    def __init__(self, max_length: int, mask_probability: float):
        self.max_length, self.p = max_length, mask_probability

    def __call__(self, samples: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        cropped = []
        for ids in samples:
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


class Esm2MLM(RecipeBase):
    name = "esm2-mlm"

    def build_model(self, cfg, tiny: bool) -> torch.nn.Module:
        from transformers import EsmConfig, EsmForMaskedLM

        if tiny:
            config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, position_embedding_type="rotary", token_dropout=True,
                               pad_token_id=PAD, mask_token_id=MASK, max_position_embeddings=1026)
            model = EsmForMaskedLM(config)
        else:
            model_spec = cfg.spec["model"]
            # A snapshot pre-seeded on the cache volume (<model_cache>/<org>/<name>, air-gapped clusters) wins;
            # otherwise the Hub, cached in model_cache.
            local = Path(cfg.paths.model_cache) / model_spec["name"]
            source = str(local) if (local / "config.json").is_file() else model_spec["name"]
            model = EsmForMaskedLM.from_pretrained(source, revision=None if source == str(local) else model_spec.get("revision"),
                                                   cache_dir=cfg.paths.model_cache, dtype=torch.float32)
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
        if tiny:
            path = Path(data_dir) / "tiny-esm2.fasta"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Every rank writes the same file: atomically, so no rank ever reads one another rank is rewriting.
            write_atomically(path, lambda staging: write_fasta(tiny_sequences(seed), staging))
        else:
            path = resolve_data_path(cfg, data_dir)
            if not path.is_file():
                raise DataError(f"data.path: {path} does not exist")
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
            train=train, eval=evals if len(evals) else None,
            collate=Collate(max_length, float(options.get("maskProbability", 0.15))),
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
