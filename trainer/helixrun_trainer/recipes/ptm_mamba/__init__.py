"""PTM-Mamba: a PTM-aware protein language model (bidirectional Mamba + gated ESM-2 fusion).

Reference: programmablebio/ptm-mamba (docs/FIDELITY.md lists every setting, ours and why it differs).

Model (model.py): the reference's 59-token vocabulary with its ids (vocab.py),
d_model x layers from model.options (768 x 24 in production; tiny 32 x 2),
ESM-2 from model.encoder (650M, layer options.esmLayer = 33; tiny: a 2-layer
EsmModel) frozen. The production PTM-Mamba weights (`ChatterjeeLab/PTM-Mamba`,
cc-by-nc-nd) are not loaded: this recipe pretrains; model.name names the run's
lineage only.

Data (data.format csv, data.path relative to the data volume), data.options.layout:
- `sequences` (default): one row per protein, column sequenceColumn (default
  ptm_seq) with PTM tokens in place (`MK<Phosphoserine>L...`).
- `sites`: the reference's ptm_labels.csv, one row per modified site: the
  unmodified sequence (sequenceColumn, default ori_seq), a 0-based position
  (positionColumn, default pos) and the PTM token (tokenColumn, default token),
  substituted as the reference's ptm_dataset.py does; a token whose residue is
  not the one at its position is an error (an off-by-one table).
- idColumn (default unique_id, else the row number) names proteins in
  split_mapping.json; a repeated sequence is kept once (the reference's
  drop_duplicates).
- split as the reference's: a numpy default_rng(splitSeed) permutation, its
  last valSize + testSize proteins held out, val before test (options.valSize
  10,000, testSize 5,000, splitSeed 42; tiny: 30 / 20 of 300 generated).
- an unknown residue or PTM token, an empty sequence, a missing column: a
  DataError naming the file, row and token. A sequence longer than
  data.maxSequenceLength - 2 residues is dropped from its split and counted
  (ESM-2 has 1,026 positions); options.tooLong: error makes it an error.
- batches: token budgets (globalBatch.tokens), none dropped. options.batchOrder
  `shuffled` (default: length-bucketed batches in a new order every epoch, as
  ESM and fairseq train) or `length-ascending` (the reference's
  SequenceLengthSampler: shortest first, the same order every epoch, which makes
  each epoch a short-to-long curriculum at a constant learning rate).

Objective: masked LM as the reference's Masker.random_or_random_and_ptm_mask:
per batch, with probability 0.2 plain 15% random masking, else 15% random plus
every PTM token; the selected positions become <mask>, draws from the runtime's
generator. Loss: mean CE over masked positions (weighted by their count across
micro-batches).

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

Evaluation: eval loss, perplexity (exp of the masked-token CE), masked-token
accuracy and accuracy on masked PTM tokens (the reference's val_ptm_acc) on the
val split at fixed draws; at the end the test split's metrics go to
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
from typing import Any, Iterable, Iterator

import numpy as np
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


def sequence_table_rows(path: Path, column: str, id_column: str) -> Iterator[tuple[str, str, str]]:
    """(where, unique_id, PTM sequence) per row of a table with one annotated sequence per row."""
    for row_number, row in sequence_rows(path, column):
        uid = (row.get(id_column) or "").strip() if id_column in row else str(row_number - 1)
        yield f"{path}:{row_number} (id {uid!r})", uid, (row.get(column) or "").strip()


def site_table_rows(path: Path, column: str, position_column: str, token_column: str,
                    id_column: str) -> Iterator[tuple[str, str, str]]:
    """(where, unique_id, PTM sequence) per protein of a site table (the reference's ptm_labels.csv: one row
    per modified site), in order of first appearance; each token replaces the residue at its 0-based position,
    a later token at the same position winning (the reference's dict does the same)."""
    proteins: dict[str, dict] = {}
    for row_number, row in sequence_rows(path, column):
        missing = [c for c in (position_column, token_column) if c not in row]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(row)}); set "
                            f"data.options.{'positionColumn' if missing[0] == position_column else 'tokenColumn'}")
        sequence = (row.get(column) or "").strip()
        uid = (row.get(id_column) or "").strip() if id_column in row else str(row_number - 1)
        protein = proteins.setdefault(sequence, {"where": f"{path}:{row_number} (id {uid!r})", "uid": uid, "sites": {}})
        position, token = (row.get(position_column) or "").strip(), (row.get(token_column) or "").strip()
        if not position and not token:
            continue  # a protein listed without a modified site
        where = f"{path}:{row_number}"
        if token not in vocab.PTM_RESIDUE:
            raise DataError(f"{where}: {token_column} {token!r} is not one of PTM-Mamba's 25 PTM tokens "
                            f"(e.g. '<Phosphoserine>', with the angle brackets)")
        try:
            index = int(position)
        except ValueError:
            raise DataError(f"{where}: {position_column} {position!r} is not an integer") from None
        if not 0 <= index < len(sequence):
            raise DataError(f"{where}: {position_column} {index} is outside the {len(sequence)}-residue sequence "
                            f"(positions are 0-based, as the reference's ptm_dataset.py reads them)")
        if sequence[index].upper() not in vocab.PTM_RESIDUE[token]:
            raise DataError(f"{where}: {token} at {position_column} {index} replaces {sequence[index]!r}, not "
                            f"{'/'.join(vocab.PTM_RESIDUE[token])} (positions are 0-based)")
        protein["sites"][index] = token
    for sequence, protein in proteins.items():
        residues = list(sequence)
        for index, token in protein["sites"].items():
            residues[index] = token
        yield protein["where"], protein["uid"], "".join(residues)


def read_ptm_table(path: Path, opts: dict, max_residues: int) -> list[tuple[str, str, list[int]]]:
    """[(unique_id, sequence, ids)] of a CSV in either layout, each sequence once; errors name the file and row."""
    layout = opts.get("layout", "sequences")
    id_column = opts.get("idColumn", "unique_id")
    if layout == "sites":
        rows = site_table_rows(path, opts.get("sequenceColumn", "ori_seq"), opts.get("positionColumn", "pos"),
                               opts.get("tokenColumn", "token"), id_column)
    else:
        rows = sequence_table_rows(path, opts.get("sequenceColumn", "ptm_seq"), id_column)
    out, seen_ids, seen_sequences, repeated = [], set(), set(), 0
    for where, uid, sequence in rows:
        if not uid:
            raise DataError(f"{where}: empty {id_column}")
        if uid in seen_ids:
            raise DataError(f"{where}: duplicate {id_column}")
        seen_ids.add(uid)
        if not sequence:
            raise DataError(f"{where}: empty sequence")
        if sequence in seen_sequences:
            repeated += 1
            continue
        seen_sequences.add(sequence)
        try:
            ids = vocab.tokenize(sequence)
        except vocab.UnknownToken as exc:
            raise DataError(f"{where}: {exc} (PTM-Mamba's vocabulary: 25 residues and 25 PTM tokens)") from None
        if len(ids) > max_residues and opts.get("tooLong", "skip") == "error":
            raise DataError(f"{where}: {len(ids)} residues, more than the {max_residues} allowed "
                            f"(data.maxSequenceLength - 2)")
        out.append((uid, sequence, [vocab.CLS, *ids, vocab.EOS]))
    if repeated:
        log.warning("%s: %d repeated sequences kept once", path, repeated)
    if not out:
        raise DataError(f"{path}: no usable sequences")
    return out


def split_by_sizes(records: list, val_size: int, test_size: int, seed: int, source: str):
    """The reference's split (ptm_dataset.py: datasets' shuffle(seed), then unshuffled train_test_splits): a
    numpy default_rng(seed) permutation whose last val_size + test_size records are held out, val before test."""
    n = len(records)
    if val_size + test_size >= n:
        raise DataError(f"{source}: {n} sequences cannot hold val {val_size} + test {test_size} + train")
    order = np.random.default_rng(seed).permutation(n).tolist()
    held_out = n - val_size - test_size
    pick = lambda part: [records[i] for i in part]  # noqa: E731
    return pick(order[:held_out]), pick(order[held_out:n - test_size]), pick(order[n - test_size:])


def drop_too_long(split: list, max_residues: int, name: str, source: str) -> list:
    """The split without sequences longer than ESM-2 takes (after splitting, so the split stays the reference's)."""
    kept = [r for r in split if len(r[2]) - 2 <= max_residues]
    if len(kept) < len(split):
        log.warning("%s: skipped %d %s sequences longer than %d residues", source, len(split) - len(kept), name,
                    max_residues)
    return kept


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
            seq += rng.choice(motifs) if rng.random() < 0.9 else rng.choice(residues)
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
    """PTM-Mamba's mixed masking -> (masked input ids, labels with -100 off the masked positions).

    One draw per batch picks the mode, as the reference's random_or_random_and_ptm_mask: plain 15% random
    masking, or 15% random plus every PTM token. Specials are never masked."""
    special = torch.isin(ids, torch.tensor(sorted(vocab.SPECIAL_IDS)))
    plain = bool(torch.rand((), generator=generator) < plain_probability)
    selected = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    if not plain:
        selected |= torch.isin(ids, torch.tensor(sorted(vocab.PTM_IDS)))
    if not selected.any():  # the reference's loss would be NaN here: one target keeps the batch useful
        candidates = (~special).flatten().nonzero().flatten()
        selected.view(-1)[candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
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
            records = read_ptm_table(path, opts, max_len - 2)
            source = str(path)
            sizes = (int(opts.get("valSize", 10_000)), int(opts.get("testSize", 5_000)))
        seed = int(opts.get("splitSeed", 42))
        splits = dict(zip(("train", "val", "test"), split_by_sizes(records, *sizes, seed, source)))
        train, val, test = (drop_too_long(records, max_len - 2, name, source) for name, records in splits.items())
        mapping = {"source": source, "seed": seed, "sizes": {
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
            split_mapping=mapping, length_sorted=opts.get("batchOrder", "shuffled") == "length-ascending",
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
        total, correct, units, ptm_correct, ptm_units = 0.0, 0, 0, 0, 0
        ptm_ids = None
        for batch in eval_batches:
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("esm_embeddings")).float()
            labels = batch["labels"]
            target = labels != -100
            hits = logits.argmax(-1) == labels
            if ptm_ids is None:
                ptm_ids = torch.tensor(sorted(vocab.PTM_IDS), device=labels.device)
            on_ptm = target & torch.isin(labels, ptm_ids)
            total += float(nn.functional.cross_entropy(logits[target], labels[target], reduction="sum"))
            correct += int(hits[target].sum())
            units += int(target.sum())
            ptm_correct += int(hits[on_ptm].sum())
            ptm_units += int(on_ptm.sum())
        loss = total / max(units, 1)
        scores = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(units, 1),
                  "ptm_accuracy": ptm_correct / max(ptm_units, 1)}
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
