"""METAGENE-1 sequence classification: labelled reads -> taxon (or any class).

Model (as m2lab-ntu's classifier): METAGENE-1, a plain Llama (production
`metagene-ai/METAGENE-1` via from_pretrained, loaded in **bf16 on purpose** —
its weights are stored fp32, 26 GB, which alone overflows a 24 GB card — or in
4-bit NF4 with bf16 compute when the plan's method is qlora; model.init scratch
builds the architecture with fresh fp32 weights instead), LoRA on the attention
projections, masked mean pooling over the last hidden states, dropout
(model.options.headDropout, 0.1 as the reference) and a linear head (fp32,
trained). Gradient checkpointing when the plan asks (the runtime calls
`gradient_checkpointing_enable`). Tiny: a 2-layer Llama of the same shape
family (vocab 1024, hidden 64, 4 heads, FFN 172, 512 positions) and a BPE
tokenizer over nucleotides built locally with the pretraining tokenizer's
special tokens.

Tokens: a read is tokenized as METAGENE-1 was pretrained (metagene-pretrain
`litgpt/data/nao.py`): its BPE tokens, no BOS, cut to data.maxSequenceLength - 1
and followed by the tokenizer's [EOS].

Data (data.format fasta-labelled; data.path a FASTA/FASTQ file or a folder):
- a folder with `train.*` and `val.*` (or `eval.*`/`test.*`) FASTA/FASTQ files
  uses them as the splits; a single file is split by a hash of the read id
  (data.options.evalFraction, 0.1), the same split every run.
- the tokenizer: METAGENE-1's (from model.name), or a tokenizer folder given
  as data.options.tokenizer (relative to the data volume).
- the label of a read: `label=<name>` anywhere in its header
  (`>read1 label=Ecoli`), or a mapping file data.options.labels (CSV/TSV with
  columns `id,label`; relative to the data volume) that wins over the header.
- a read with no label, an unknown residue (alphabet ACGTN) or an empty
  sequence: DataError naming the file and record; with
  data.options.onError: skip those are dropped and counted in the log instead.
  A read longer than data.maxSequenceLength tokens is truncated (as the
  reference classifier does), counted and logged. An eval label never seen in
  training is an error.

Objective: cross-entropy over classes; a micro-batch weighs by its sample
count. Evaluation: loss, accuracy, macro-F1 (model selection: keepBest
eval_macro_f1), MCC, AUROC (2..10 classes); the full report with per-class
scores and the confusion matrix goes to records/eval_report.json.

Prediction: `python -m helixrun_trainer.recipes.metagene_classification predict
--model CHECKPOINTS/final --input reads.fasta --output predictions.csv`
writes `id,prediction,probability,<p_class...>` per read.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes.adapters import add_lora, base_load_kwargs, method_of
from helixrun_trainer.recipes.base import (LossOutput, RecipeBase, RecipeData, in_eval_split, on_data_volume,
                                          resolve_data_path)
from helixrun_trainer.recipes.weights import load_main_model

log = logging.getLogger(__name__)

if torch.cuda.is_available():  # fragmentation is what OOMs a 24 GB card first; the operator sets it too
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

SEQ_SUFFIXES = (".fa", ".fasta", ".fna", ".fq", ".fastq", ".fa.gz", ".fasta.gz", ".fna.gz", ".fq.gz", ".fastq.gz")
TINY_CLASSES = ("Escherichia_coli", "Staphylococcus_aureus", "Bacteroides_fragilis")
PAD_ID = 0
# Eval file prefixes, most preferred first: model selection (keepBest) runs on this split, so the test
# split is a last resort ("val" also covers valid/validation).
EVAL_PREFIXES = ("val", "eval", "test")


# -- model --------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """A decoder base, masked mean pooling over real tokens, dropout, a linear head."""

    def __init__(self, base: nn.Module, hidden_size: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_classes)

    def gradient_checkpointing_enable(self, **kwargs):
        kwargs.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
        self.base.gradient_checkpointing_enable(**kwargs)
        if hasattr(self.base, "enable_input_require_grads"):
            self.base.enable_input_require_grads()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled).to(self.head.weight.dtype))


def tiny_llama_config(vocab_size: int = 1024):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=172, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=3, eos_token_id=4, tie_word_embeddings=False)


# -- data ---------------------------------------------------------------------


def label_from_header(description: str) -> str | None:
    for token in description.split()[1:]:
        if token.startswith("label="):
            return token[len("label="):] or None
    return None


def read_label_file(path: Path) -> dict[str, str]:
    """{read id: label} from a CSV or TSV with an id and a label column; errors name the file and line."""
    if not path.is_file():
        raise DataError(f"data.options.labels: {path} does not exist")
    with open(path, newline="") as handle:
        dialect = "excel-tab" if "\t" in handle.readline() else "excel"
        handle.seek(0)
        reader = csv.DictReader(handle, dialect=dialect)
        if not {"id", "label"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: a labels file needs a header with columns id and label")
        out = {}
        for row in reader:  # line_num, not a row count: right after blank lines and multi-line quoted fields
            if not row["id"] or not row["label"]:
                raise DataError(f"{path}:{reader.line_num}: empty id or label")
            out[row["id"]] = row["label"]
    if not out:
        raise DataError(f"{path}: no labels below the header")
    return out


def pick_eval_file(files: list[Path]) -> Path | None:
    """The first (sorted) file of the most preferred eval split present; test only when nothing else is."""
    for prefix in EVAL_PREFIXES:
        matches = [p for p in files if p.name.lower().startswith(prefix)]
        if matches:
            if prefix == "test":
                log.warning("no val.*/eval.* file: evaluating (and selecting checkpoints) on %s", matches[0].name)
            return matches[0]
    return None


def read_labelled(path: Path, labels: dict[str, str] | None, on_error: str) -> tuple[list[tuple[str, str, str]], Any]:
    """[(id, sequence, label)] of one FASTA/FASTQ file, plus the skip counts."""
    from helixrun_trainer.formats.fasta import DNA, FastaError, Skips, read_sequences

    skips = Skips()
    out, missing = [], 0
    try:
        for record in read_sequences(path, alphabet=DNA, on_error=on_error, skips=skips):
            label = (labels or {}).get(record.id) or label_from_header(record.description)
            if label is None:
                if on_error == "skip":
                    missing += 1
                    continue
                raise DataError(f"{path}: record {record.index} ({record.id!r}) has no label "
                                f"(put label=<name> in its header or list it in data.options.labels)")
            out.append((record.id, record.sequence, label))
    except FastaError as exc:
        raise DataError(str(exc)) from exc
    if missing:
        skips.counts["missing-label"] += missing
    if skips.total:
        log.warning("%s: %s", path, skips.summary())
    return out, skips


def tiny_reads(seed: int, n: int = 240) -> list[tuple[str, str, str]]:
    """Reads from three synthetic 'genomes', each rich in one nucleotide (A, C, T): a composition signal the tiny
    model learns within a --tiny run."""
    rng = random.Random(seed)
    weights = {0: (0.7, 0.1, 0.1, 0.1), 1: (0.1, 0.7, 0.1, 0.1), 2: (0.1, 0.1, 0.1, 0.7)}
    genomes = {c: "".join(rng.choices("ACGT", weights=w, k=3000)) for c, w in weights.items()}
    reads = []
    for i in range(n):
        c = i % 3
        length = rng.randint(150, 250)
        start = rng.randrange(len(genomes[c]) - length)
        reads.append((f"read{i:04d}", genomes[c][start:start + length], TINY_CLASSES[c]))
    return reads


class Collate:
    def __init__(self, pad_id: int = PAD_ID):
        self.pad_id = pad_id

    def __call__(self, samples: list[tuple[list[int], int]], generator: torch.Generator | None = None):
        width = max(len(ids) for ids, _ in samples)
        input_ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(samples), width), dtype=torch.long)
        for row, (ids, _) in enumerate(samples):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, :len(ids)] = 1
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def read_token_ids(tokenizer, sequences: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """Each read as pretraining saw it: its BPE tokens (no BOS) cut to max_tokens - 1, then [EOS]; and how many
    were cut."""
    ids = tokenizer(sequences, add_special_tokens=False)["input_ids"]
    return [[*x[:max_tokens - 1], tokenizer.eos_token_id] for x in ids], sum(len(x) >= max_tokens for x in ids)


def encode_reads(tokenizer, reads: list[tuple[str, str, str]], class_index: dict[str, int], max_tokens: int,
                 source: str) -> tuple[list[tuple[list[int], int]], int]:
    for rid, _, label in reads:
        if label not in class_index:
            raise DataError(f"{source}: read {rid!r} has label {label!r}, not among the training labels "
                            f"{sorted(class_index)}")
    ids, truncated = read_token_ids(tokenizer, [seq for _, seq, _ in reads], max_tokens)
    return [(x, class_index[label]) for x, (_, _, label) in zip(ids, reads)], truncated


# -- recipe -------------------------------------------------------------------


class MetageneClassification(RecipeBase):
    name = "metagene-classification"

    def __init__(self):
        self.classes: list[str] = []
        self.tokenizer = None
        self.records_dir: Path | None = None
        self.last_report: dict | None = None
        self._data: tuple | None = None

    # data first: the head's size is the number of classes found in the training data
    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        key = (cfg.name, cfg.uid, tiny, str(data_dir))
        if self._data is not None and self._data[0] == key:  # build_model read it already
            return self._data[1]
        data = self._build_data(cfg, tiny, data_dir)
        self._data = (key, data)
        return data

    def _build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        spec = cfg.spec
        data = spec.get("data") or {}
        opts = data.get("options") or {}
        max_tokens = int(data.get("maxSequenceLength") or 512)
        on_error = opts.get("onError", "raise")
        seed = (spec.get("training") or {}).get("seed", 42)
        self.records_dir = Path(cfg.paths.records)
        if tiny:
            reads = tiny_reads(seed)
            train = [r for r in reads if not in_eval_split(r[0], 0.2)]
            evals = [r for r in reads if in_eval_split(r[0], 0.2)]
            source = "tiny"
        else:
            path = resolve_data_path(cfg, data_dir)
            labels = read_label_file(on_data_volume(opts["labels"], data_dir)) if opts.get("labels") else None
            train, evals, source = self._read_splits(path, labels, on_error, float(opts.get("evalFraction", 0.1)))
        if not train:
            raise DataError(f"{source}: no labelled training reads")
        self.classes = sorted({label for _, _, label in train})
        if len(self.classes) < 2:
            raise DataError(f"{source}: training reads carry {len(self.classes)} label(s); classification needs 2+")
        self.tokenizer = self._tokenizer(cfg, tiny, [seq for _, seq, _ in train], Path(data_dir))
        index = {c: i for i, c in enumerate(self.classes)}
        train_enc, t1 = encode_reads(self.tokenizer, train, index, max_tokens, source)
        eval_enc, t2 = encode_reads(self.tokenizer, evals, index, max_tokens, source)
        if t1 + t2:
            log.warning("%s: %d reads longer than %d tokens were truncated", source, t1 + t2, max_tokens)
        return RecipeData(
            train=train_enc, eval=eval_enc or None, collate=Collate(self.tokenizer.pad_token_id),
            lengths=[len(ids) for ids, _ in train_enc], eval_lengths=[len(ids) for ids, _ in eval_enc],
            split_mapping={"source": source, "classes": self.classes, "train": len(train_enc), "eval": len(eval_enc),
                           "eval_ids": [rid for rid, _, _ in evals][:100000]},
        )

    def _read_splits(self, path: Path, labels, on_error: str, fraction: float):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.lower().endswith(SEQ_SUFFIXES))
            train_files = [p for p in files if p.name.lower().startswith("train")]
            if not train_files:
                raise DataError(f"{path}: no train.* FASTA/FASTQ file in the folder")
            train = [r for p in train_files for r in read_labelled(p, labels, on_error)[0]]
            eval_file = pick_eval_file(files)
            evals = read_labelled(eval_file, labels, on_error)[0] if eval_file else []
            return train, evals, str(path)
        if not path.is_file():
            raise DataError(f"data.path: {path} does not exist")
        reads, _ = read_labelled(path, labels, on_error)
        return ([r for r in reads if not in_eval_split(r[0], fraction)], [r for r in reads if in_eval_split(r[0], fraction)],
                str(path))

    def _tokenizer(self, cfg, tiny: bool, sequences: list[str], data_dir: Path):
        if tiny:
            from helixrun_trainer.recipes.dna_tokenizer import metagene_tokenizer

            return metagene_tokenizer(sequences, cache=data_dir / "tiny-metagene-tokenizer")
        from transformers import AutoTokenizer

        model = cfg.spec.get("model") or {}
        local = ((cfg.spec.get("data") or {}).get("options") or {}).get("tokenizer")
        if local:  # a tokenizer folder on the data volume instead of the model's own
            tok = AutoTokenizer.from_pretrained(str(on_data_volume(local, data_dir)))
        else:
            tok = AutoTokenizer.from_pretrained(model["name"], revision=model.get("revision"),
                                                cache_dir=cfg.paths.model_cache)
        if tok.pad_token_id is None:
            tok.pad_token_id = PAD_ID
        return tok

    def build_model(self, cfg, tiny: bool) -> nn.Module:
        if not self.classes:  # the runtime builds the model first: read the data to know the classes
            self.build_data(cfg, tiny, Path(cfg.paths.data))
        return build_classifier(cfg, tiny, len(self.classes))

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
        n = int(batch["labels"].shape[0])
        return LossOutput(loss=loss, loss_units=n, num_tokens=int(batch["attention_mask"].sum()), num_samples=n)

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        from helixrun_trainer.evaluation.classification import classification_scores, scalar_scores

        probs, labels, total = [], [], 0.0
        for batch in eval_batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
            total += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            probs.append(torch.softmax(logits, -1).cpu().numpy())
            labels.extend(batch["labels"].cpu().tolist())
        if not labels:
            return {}
        report = classification_scores(labels, np.concatenate(probs), self.classes)
        report["loss"] = total / len(labels)
        self.last_report = report
        if self.records_dir is not None and os.environ.get("RANK", "0") in ("0", ""):
            self.records_dir.mkdir(parents=True, exist_ok=True)
            (self.records_dir / "eval_report.json").write_text(json.dumps(report, indent=1))
        return scalar_scores(report)

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def export(self, model, cfg, out_dir: Path) -> None:
        """final/: recipe.json (classes, base, lengths), the LoRA adapter, the head; tiny: the whole model."""
        out_dir.mkdir(parents=True, exist_ok=True)
        model_spec = cfg.spec.get("model") or {}
        meta = {"recipe": self.name, "classes": self.classes, "base": model_spec.get("name"), "lora": model_spec.get("lora"),
                "headDropout": head_dropout(cfg),
                "revision": model_spec.get("revision"), "method": method_of(cfg), "tiny": bool(getattr(model, "_tiny", False)),
                "maxSequenceLength": (cfg.spec.get("data") or {}).get("maxSequenceLength") or 512}
        (out_dir / "recipe.json").write_text(json.dumps(meta, indent=1))
        if meta["tiny"]:
            torch.save(model.state_dict(), out_dir / "model.pt")
        else:
            model.base.save_pretrained(str(out_dir / "adapter"))
            torch.save(model.head.state_dict(), out_dir / "head.pt")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(out_dir / "tokenizer"))


def head_dropout(cfg) -> float:
    return float(((cfg.spec.get("model") or {}).get("options") or {}).get("headDropout", 0.1))


def build_classifier(cfg, tiny: bool, num_classes: int) -> SequenceClassifier:
    from transformers import AutoModel, LlamaModel

    method = method_of(cfg)
    base = LlamaModel(tiny_llama_config()) if tiny else load_main_model(AutoModel, cfg, **base_load_kwargs(cfg, method))
    hidden = base.config.hidden_size
    if method in ("lora", "qlora"):
        base = add_lora(base, cfg, method=method)
    model = SequenceClassifier(base, hidden, num_classes, head_dropout(cfg))
    model._tiny = tiny
    return model


# -- batch inference ------------------------------------------------------------


def load_for_inference(model_dir: Path, device: str = "cpu"):
    meta = json.loads((model_dir / "recipe.json").read_text())
    from transformers import AutoModel, AutoTokenizer, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if meta["tiny"]:
        base = LlamaModel(tiny_llama_config())
        if meta["method"] in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model

            lora = meta.get("lora") or {}
            base = get_peft_model(base, LoraConfig(r=int(lora.get("r", 8)), lora_alpha=float(lora.get("alpha", 16)),
                                                   target_modules=list(lora.get("targetModules") or ["q_proj", "v_proj"])))
        model = SequenceClassifier(base, 64, len(meta["classes"]), meta.get("headDropout", 0.1))
        model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu"))
    else:
        from peft import PeftModel

        base = AutoModel.from_pretrained(meta["base"], revision=meta.get("revision"), dtype=torch.bfloat16)
        base = PeftModel.from_pretrained(base, str(model_dir / "adapter"))
        model = SequenceClassifier(base, base.config.hidden_size, len(meta["classes"]), meta.get("headDropout", 0.1))
        model.head.load_state_dict(torch.load(model_dir / "head.pt", map_location="cpu"))
    return model.to(device).eval(), tokenizer, meta


def predict(model_dir: Path, inputs: Path, output: Path, batch_size: int = 32, device: str | None = None,
            on_error: str = "raise") -> int:
    """Write predictions.csv for every read of `inputs`; returns the number of reads classified."""
    from helixrun_trainer.formats.fasta import DNA, FastaError, Skips, read_sequences

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_for_inference(Path(model_dir), device)
    classes, max_tokens = meta["classes"], int(meta["maxSequenceLength"])
    collate = Collate(tokenizer.pad_token_id)
    skips = Skips()
    output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(output, "w", newline="") as handle, torch.no_grad():
        writer = csv.writer(handle)
        writer.writerow(["id", "prediction", "probability", *(f"p_{c}" for c in classes)])

        def flush(chunk):
            ids, _ = read_token_ids(tokenizer, [seq for _, seq in chunk], max_tokens)
            samples = [(x, 0) for x in ids]
            batch = {k: v.to(device) for k, v in collate(samples).items()}
            probs = torch.softmax(model(batch["input_ids"], batch["attention_mask"]).float(), -1).cpu()
            for (rid, _), p in zip(chunk, probs):
                best = int(p.argmax())
                writer.writerow([rid, classes[best], f"{float(p[best]):.6f}", *(f"{float(x):.6f}" for x in p)])

        chunk = []
        try:
            for record in read_sequences(inputs, alphabet=DNA, on_error=on_error, skips=skips):
                chunk.append((record.id, record.sequence))
                if len(chunk) == batch_size:
                    flush(chunk)
                    count += len(chunk)
                    chunk = []
        except FastaError as exc:
            raise DataError(str(exc)) from exc
        if chunk:
            flush(chunk)
            count += len(chunk)
    if skips.total:
        log.warning("%s: %s", inputs, skips.summary())
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helixrun_trainer.recipes.metagene_classification")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify every read of a FASTA/FASTQ file into predictions.csv")
    p.add_argument("--model", type=Path, required=True, help="an exported model folder (checkpoints/final)")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, default=Path("predictions.csv"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--skip-bad-records", action="store_true", help="skip and count bad reads instead of failing")
    args = parser.parse_args(argv)
    try:
        n = predict(args.model, args.input, args.output, args.batch_size, args.device,
                    "skip" if args.skip_bad_records else "raise")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} predictions to {args.output}")
    return 0


RECIPE = MetageneClassification()

if __name__ == "__main__":
    sys.exit(main())
