"""PTM-Mamba: a PTM-aware protein language model (bidirectional Mamba + gated ESM-2 fusion).

Model (model.py): 59-token vocabulary (vocab.py), d_model x layers from
model.options (768 x 24 in production; tiny 32 x 2), ESM-2 from model.encoder
(650M, layer options.esmLayer = 33; tiny: a 2-layer EsmModel) frozen. The
production PTM-Mamba weights (`ChatterjeeLab/PTM-Mamba`, cc-by-nc-nd) are not
loaded: this recipe pretrains; model.name names the run's lineage only.

Data (data.format csv, data.path relative to the data volume):
- column options.sequenceColumn (default ptm_seq) holds sequences with PTM
  tokens (`MK<Phosphoserine>L...`); options.idColumn (default unique_id, else
  the row number) identifies them in split_mapping.json.
- split by sizes and seed as the seed's pipeline: options.valSize 10,000,
  testSize 5,000, splitSeed 42 (tiny: 30 / 20 of 300 generated sequences).
- an unknown residue or PTM token, an empty sequence, a missing column: a
  DataError naming the file, row and token. A sequence longer than
  data.maxSequenceLength - 2 residues is skipped and counted (ESM-2 has 1,026
  positions); options.tooLong: error makes it an error instead.
- batches: the runtime's token-budget batches over these lengths
  (length-sorted, flushed at the budget, none dropped; globalBatch.tokens).

Objective: masked LM. Per sequence, with probability 0.2 plain 15% random
masking, else 15% random plus every PTM token (PTM-Mamba's mixed masking); the
selected positions become <mask>, draws from the runtime's generator. Loss:
mean CE over masked positions (weighted by their count across micro-batches).

ESM embeddings (options.esmEmbeddings):
- `on-the-fly` (default): ESM-2 runs every step on the *masked* input, PTM
  tokens and masked positions as ESM <mask>, as the official code does.
- `precomputed`: stage 1 (`helixrun-train precompute ptm-mamba`, run before
  training) writes HDF5 embeddings of the *unmasked* sequences
  (embeddings.py: per split, per rank, resumable, skipped when complete; into
  data.options.embeddingsDir, default <checkpoints>/esm_embeddings) and training
  reads them. This LEAKS the masked residues (documented in embeddings.py,
  shown by the tests): the run logs a warning and its eval metrics carry
  eval_leaky_esm_embeddings = 1.

Evaluation: eval loss, perplexity (exp of the masked-token CE) and masked-token
accuracy on the val split; at the end the test split's metrics go to
records/test_metrics.json and records/metrics.json (the seed's list of train,
val and test metrics). Best/last checkpoints: the runtime's keepBest (eval_loss)
and latest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from helixrun_trainer.errors import DataError
from helixrun_trainer.formats.table import sequence_rows
from helixrun_trainer.recipes.base import LossOutput, RecipeBase, RecipeData, resolve_data_path
from helixrun_trainer.recipes.ptm_mamba import vocab
from helixrun_trainer.recipes.ptm_mamba.model import PTMMamba, tiny_esm

log = logging.getLogger(__name__)

MASK_PROBABILITY = 0.15
PLAIN_MASKING_PROBABILITY = 0.2
TINY = {"sequences": 300, "valSize": 30, "testSize": 20}


# -- data ---------------------------------------------------------------------


def read_csv_sequences(path: Path, column: str, id_column: str, max_residues: int, too_long: str):
    """[(unique_id, sequence, ids)] of a CSV; errors name the file and row."""
    out, skipped, seen = [], 0, set()
    for row_number, row in sequence_rows(path, column):
        uid = (row.get(id_column) or "").strip() if id_column in row else str(row_number - 1)
        sequence = (row.get(column) or "").strip()
        where = f"{path}:{row_number} (id {uid!r})"
        if not uid:
            raise DataError(f"{where}: empty {id_column}")
        if uid in seen:
            raise DataError(f"{where}: duplicate {id_column}")
        seen.add(uid)
        if not sequence:
            raise DataError(f"{where}: empty sequence")
        try:
            ids = vocab.tokenize(sequence)
        except vocab.UnknownToken as exc:
            raise DataError(f"{where}: {exc} (PTM-Mamba's vocabulary: 25 residues and 25 PTM tokens)") from None
        if len(ids) > max_residues:
            if too_long == "error":
                raise DataError(f"{where}: {len(ids)} residues, more than the {max_residues} allowed "
                                f"(data.maxSequenceLength - 2)")
            skipped += 1
            continue
        out.append((uid, sequence, [vocab.CLS, *ids, vocab.EOS]))
    if skipped:
        log.warning("%s: skipped %d sequences longer than %d residues", path, skipped, max_residues)
    if not out:
        raise DataError(f"{path}: no usable sequences")
    return out


def split_by_sizes(records: list, val_size: int, test_size: int, seed: int, source: str):
    """A seeded permutation: the first val_size -> val, the next test_size -> test, the rest -> train."""
    if val_size + test_size >= len(records):
        raise DataError(f"{source}: {len(records)} sequences cannot hold val {val_size} + test {test_size} + train")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = [records[i] for i in order[:val_size]]
    test = [records[i] for i in order[val_size:val_size + test_size]]
    train = [records[i] for i in order[val_size + test_size:]]
    return train, val, test


def tiny_ptm_sequences(seed: int, n: int, max_residues: int) -> list[tuple[str, str]]:
    """Proteins from a few motifs; S/T/Y before a P are often phosphorylated (learnable PTM context)."""
    rng = random.Random(seed)
    residues = "ACDEFGHIKLMNPQRSTVWY"
    motifs = ["".join(rng.choice(residues) for _ in range(5)) for _ in range(8)] + ["RRASP", "KTPEK", "SPYTP"]
    ptm = {"S": "<Phosphoserine>", "T": "<Phosphothreonine>", "Y": "<Phosphotyrosine>", "K": "<N6-acetyllysine>"}
    out = []
    for i in range(n):
        length = rng.randint(12, max(12, min(60, max_residues)))
        seq = ""
        while len(seq) < length:
            seq += rng.choice(motifs) if rng.random() < 0.7 else rng.choice(residues)
        pieces = list(seq[:length])
        for j in range(len(pieces) - 1):
            if pieces[j] in "STY" and pieces[j + 1] == "P" and rng.random() < 0.8:
                pieces[j] = ptm[pieces[j]]
            elif pieces[j] == "K" and pieces[j + 1] == "T" and rng.random() < 0.5:
                pieces[j] = ptm["K"]
        out.append((f"tiny_{i:05d}", "".join(pieces)))
    return out


def mask_batch(ids: torch.Tensor, generator: torch.Generator, probability: float = MASK_PROBABILITY,
               plain_probability: float = PLAIN_MASKING_PROBABILITY) -> tuple[torch.Tensor, torch.Tensor]:
    """PTM-Mamba's mixed masking -> (masked input ids, labels with -100 off the masked positions)."""
    special = (ids == vocab.CLS) | (ids == vocab.EOS) | (ids == vocab.PAD)
    is_ptm = torch.zeros_like(ids, dtype=torch.bool)
    for token in vocab.PTM_IDS:
        is_ptm |= ids == token
    plain = torch.rand(ids.shape[0], generator=generator) < plain_probability
    selected = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    selected |= is_ptm & ~plain.unsqueeze(1)
    for row in range(ids.shape[0]):  # every sequence contributes at least one target
        if not selected[row].any():
            candidates = (~special[row]).nonzero().flatten()
            selected[row, candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    return torch.where(selected, torch.full_like(ids, vocab.MASK), ids), labels


class Collate:
    """[(uid, sequence, ids)] -> padded masked batch; with an EmbeddingStore, the precomputed ESM states too."""

    def __init__(self, store=None):
        self.store = store

    def __call__(self, samples: list, generator: torch.Generator) -> dict[str, torch.Tensor]:
        width = max(len(ids) for _, _, ids in samples)
        ids = torch.full((len(samples), width), vocab.PAD, dtype=torch.long)
        for row, (_, _, seq_ids) in enumerate(samples):
            ids[row, :len(seq_ids)] = torch.tensor(seq_ids, dtype=torch.long)
        attention = (ids != vocab.PAD).long()
        inputs, labels = mask_batch(ids, generator)
        batch = {"input_ids": inputs, "attention_mask": attention, "labels": labels}
        if self.store is not None:
            states = [self.store.get(uid, seq) for uid, seq, _ in samples]
            esm = torch.zeros((len(samples), width, states[0].shape[-1]))
            for row, s in enumerate(states):
                esm[row, :s.shape[0]] = s
            batch["esm_embeddings"] = esm
        return batch


# -- recipe -------------------------------------------------------------------


class PTMMambaRecipe(RecipeBase):
    name = "ptm-mamba"

    def __init__(self):
        self.test: list | None = None
        self.test_collate = None
        self.records_dir: Path | None = None
        self.model_ref: nn.Module | None = None
        self.precomputed = False

    @staticmethod
    def options(cfg) -> dict:
        return dict((cfg.spec.get("model") or {}).get("options") or {})

    def build_model(self, cfg, tiny: bool) -> nn.Module:
        opts = self.options(cfg)
        if tiny:
            model = PTMMamba(d_model=32, layers=2, esm=tiny_esm(), esm_dim=32, esm_layer=2, state_size=8)
        else:
            from transformers import EsmModel

            spec = cfg.spec.get("model") or {}
            encoder = spec.get("encoder") or "facebook/esm2_t33_650M_UR50D"
            esm = EsmModel.from_pretrained(encoder, cache_dir=cfg.paths.model_cache, add_pooling_layer=False,
                                           dtype=torch.float32)
            model = PTMMamba(d_model=int(opts.get("dModel", 768)), layers=int(opts.get("layers", 24)), esm=esm,
                             esm_dim=esm.config.hidden_size, esm_layer=int(opts.get("esmLayer", 33)))
        self.model_ref = model
        return model

    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        spec = cfg.spec
        data = spec.get("data") or {}
        opts = data.get("options") or {}
        max_len = int(data.get("maxSequenceLength") or 1024)
        self.records_dir = Path(cfg.paths.records)
        if tiny:
            seed = (spec.get("training") or {}).get("seed", 42)
            raw = tiny_ptm_sequences(seed, TINY["sequences"], max_len - 2)
            records = [(uid, seq, vocab.encode(seq)) for uid, seq in raw]
            source = "tiny"
            sizes = (TINY["valSize"], TINY["testSize"])  # the run's sizes are for its real data set
        else:
            path = resolve_data_path(cfg, data_dir)
            records = read_csv_sequences(path, opts.get("sequenceColumn", "ptm_seq"), opts.get("idColumn", "unique_id"),
                                         max_len - 2, opts.get("tooLong", "skip"))
            source = str(path)
            sizes = (int(opts.get("valSize", 10_000)), int(opts.get("testSize", 5_000)))
        train, val, test = split_by_sizes(records, *sizes, int(opts.get("splitSeed", 42)), source)
        mapping = {"source": source, "seed": int(opts.get("splitSeed", 42)), "sizes": {
            "train": len(train), "val": len(val), "test": len(test)}, "splits": {
            **{r[0]: "train" for r in train}, **{r[0]: "val" for r in val}, **{r[0]: "test" for r in test}}}
        mode = self.options(cfg).get("esmEmbeddings", "on-the-fly")
        if mode not in ("on-the-fly", "precomputed"):
            raise DataError(f"model.options.esmEmbeddings: {mode!r} is neither on-the-fly nor precomputed")
        self.precomputed = mode == "precomputed"
        store = self._precomputed_store(cfg, opts, {"train": train, "val": val, "test": test}) \
            if self.precomputed else None
        self.test = test
        self.test_collate = Collate(store)
        return RecipeData(
            train=train, eval=val, collate=Collate(store),
            lengths=[len(ids) for _, _, ids in train], eval_lengths=[len(ids) for _, _, ids in val],
            split_mapping=mapping,
        )

    def _precomputed_store(self, cfg, opts: dict, splits: dict):
        from helixrun_trainer.recipes.ptm_mamba import embeddings

        log.warning("ptm-mamba: options.esmEmbeddings=precomputed: the ESM branch sees the UNMASKED sequence, so "
                    "masked residues leak into the MLM objective; loss and perplexity are not comparable to an "
                    "on-the-fly run")
        directory = Path(opts.get("embeddingsDir") or Path(cfg.paths.checkpoints) / "esm_embeddings")
        if not directory.is_absolute():
            directory = Path(cfg.paths.checkpoints) / directory
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        missing = [m for s in splits if (m := embeddings.missing_marker(directory, s)) is not None]
        if missing:
            if self.model_ref is None:  # training builds the data before the model: precompute is its own stage
                raise DataError(f"ESM embeddings incomplete: {missing[0]} is missing; run `helixrun-train "
                                "precompute ptm-mamba` with this run's config (--config FILE, or --local -f "
                                "RUN.yaml --workdir DIR) first")
            device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}") if torch.cuda.is_available() else "cpu"
            esm = self.model_ref.esm
            esm.to(device)
            embeddings.precompute_all(self.model_ref, {s: [(r[0], r[1]) for r in recs] for s, recs in splits.items()},
                                      directory, rank=rank, world=world, batch_size=int(opts.get("embedBatchSize", 8)),
                                      device=device)
            esm.to("cpu")
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
        return embeddings.EmbeddingStore(directory)

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("esm_embeddings"))
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        units = int((batch["labels"] != -100).sum())
        return LossOutput(loss=loss, loss_units=units, num_tokens=int(batch["attention_mask"].sum()),
                          num_samples=int(batch["input_ids"].shape[0]))

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        total, correct, units = 0.0, 0, 0
        for batch in eval_batches:
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("esm_embeddings")).float()
            labels = batch["labels"]
            target = labels != -100
            total += float(nn.functional.cross_entropy(logits[target], labels[target], reduction="sum"))
            correct += int((logits[target].argmax(-1) == labels[target]).sum())
            units += int(target.sum())
        loss = total / max(units, 1)
        scores = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(units, 1)}
        if self.precomputed:  # tag: these numbers saw the masked residues through the ESM branch
            scores["leaky_esm_embeddings"] = 1.0
        return scores

    def test_metrics(self, model) -> dict[str, float]:
        from helixrun_trainer.data import mix_seed

        if not self.test:
            return {}
        batches = (self.test_collate(self.test[i:i + 16], torch.Generator().manual_seed(mix_seed(0, "test", i)))
                   for i in range(0, len(self.test), 16))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = self.evaluate(model, ({k: v.to(device) for k, v in b.items()} for b in batches))
        model.train(was_training)
        return scores

    def export(self, model, cfg, out_dir: Path) -> None:
        """final/: the PTM-Mamba weights (without the frozen ESM) + its config; test metrics beside the records."""
        out_dir.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("esm.")}
        save_file(state, str(out_dir / "model.safetensors"))
        meta = {"recipe": self.name, "d_model": model.d_model, "layers": len(model.blocks), "esm_dim": model.esm_dim,
                "esm_layer": model.esm_layer, "encoder": (cfg.spec.get("model") or {}).get("encoder"),
                "vocab": list(vocab.TOKENS), "esm_embeddings": "precomputed" if self.precomputed else "on-the-fly"}
        (out_dir / "config.json").write_text(json.dumps(meta, indent=1))
        if self.records_dir is not None and os.environ.get("RANK", "0") in ("0", ""):
            test = {f"test_{k}": v for k, v in self.test_metrics(model).items()}
            self.records_dir.mkdir(parents=True, exist_ok=True)
            (self.records_dir / "test_metrics.json").write_text(json.dumps(test, indent=1))
            history = []
            jsonl = self.records_dir / "metrics.jsonl"
            if jsonl.exists():
                history = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            (self.records_dir / "metrics.json").write_text(json.dumps([*history, test], indent=1))


RECIPE = PTMMambaRecipe()
