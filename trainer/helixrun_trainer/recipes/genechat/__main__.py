"""helixrun-train {prepare,predict} genechat ...

prepare: NCBI inputs -> train/val/test folders (prepare.py).

predict --split: the paper-comparable evaluation, one command. Every summary QA of a split folder (the test
split `prepare` wrote) is answered as the reference's inference_all.py answers it: the chat prompt with a
summary question drawn per gene (seeded), 4 beams, repetition penalty 1.9, stop at ###, up to 512 new
tokens, one gene at a time; then scored as its eval.py scores (mean per-sentence BLEU-1..4, no smoothing)
plus METEOR. OUT/predictions.jsonl holds every answer, OUT/scores.json the scores with the settings that
produced them and the paper's figures:

    helixrun-train predict genechat --model CHECKPOINTS/final --split /data/genechat/test --output OUT \\
        [--beams 4] [--max-new-tokens 512] [--seed 42] [--batch-size 1] [--limit N]

predict --fasta: the same prompt and settings for each gene of a FASTA file, a TSV gene_id<TAB>description:

    helixrun-train predict genechat --model CHECKPOINTS/final --fasta gene.fa [--question "..."] [--output f.tsv]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

# The paper's test-set figures as the A800 training guide quotes them (not checked against the paper itself).
PAPER_SCORES = {"bleu1": 0.1937, "bleu4": 0.0816, "meteor": 0.2725,
                "source": "GeneChat, bioRxiv 10.1101/2025.06.05.658031, as quoted; unverified"}


def load(model_dir: Path):
    """The exported GeneChat, on the GPU when there is one, and a recipe holding its tokenizers and settings."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from helixrun_trainer.recipes import genechat
    from helixrun_trainer.recipes.adapters import add_lora
    from helixrun_trainer.recipes.genechat.model import GeneChat

    meta = json.loads((model_dir / "genechat.json").read_text())
    model_spec = meta["spec"]["model"] or {}
    text_tok = AutoTokenizer.from_pretrained(str(model_dir / "text_tokenizer"))
    if meta["tiny"]:
        dna_tok = AutoTokenizer.from_pretrained(str(model_dir / "dna_tokenizer"))
        encoder, llm = genechat.tiny_encoder(), genechat.tiny_llm(len(text_tok))
    else:
        from transformers import AutoModelForCausalLM

        encoder_name = genechat.dnabert2_name(model_spec)
        encoder = genechat.load_dnabert2(encoder_name, None, None)
        dna_tok = genechat.load_dnabert2_tokenizer(encoder_name, None, None)
        llm = AutoModelForCausalLM.from_pretrained(model_spec["name"], revision=model_spec.get("revision"),
                                                   dtype=torch.bfloat16)
    if meta["method"] in ("lora", "qlora"):
        llm = add_lora(llm, _SpecOnly(meta["spec"]), method="lora")
    model = GeneChat(encoder, llm, encoder.config.hidden_size, llm.config.hidden_size)
    missing, unexpected = model.load_state_dict(load_file(str(model_dir / "genechat.safetensors")), strict=False)
    if unexpected:
        raise SystemExit(f"{model_dir}: weights do not match the model: {unexpected[:5]}")
    recipe = genechat.GeneChatRecipe()
    recipe.dna_tokenizer, recipe.text_tokenizer, recipe.settings = dna_tok, text_tok, meta["settings"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), recipe, device


class _SpecOnly:
    """What add_lora reads of a run: its spec."""

    def __init__(self, spec):
        self.spec = spec
        self.plan = None


def answer(model, recipe, device, items, generation: dict, batch_size: int) -> list[str]:
    """Answers for QA items with the reference's chat prompt, `batch_size` genes at a time."""
    from helixrun_trainer.data import to_device
    from helixrun_trainer.recipes.genechat import GENERATION_INPUTS

    collate = recipe.collate_for("chat")
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start:start + batch_size])
        out += recipe.generate(model, to_device({k: batch[k] for k in GENERATION_INPUTS}, device), generation)
    return out


def evaluate_split(model_dir: Path, split: Path, output: Path, generation: dict, seed: int, batch_size: int,
                   limit: int | None) -> dict:
    """The paper-comparable evaluation of `split`: predictions.jsonl and scores.json in `output`."""
    from dataclasses import replace

    from helixrun_trainer.evaluation.text import bleu, meteor
    from helixrun_trainer.recipes.genechat import protocol, read_split

    items = [i for i in read_split(split, "raise") if i.kind == "summary"][:limit]
    draw = random.Random(seed)
    items = [replace(i, question=draw.choice(protocol.SUMMARY_QUESTIONS)) for i in items]
    model, recipe, device = load(model_dir)
    with torch.no_grad():
        hyps = answer(model, recipe, device, items, generation, batch_size)
    output.mkdir(parents=True, exist_ok=True)
    with (output / "predictions.jsonl").open("w") as f:
        for item, hyp in zip(items, hyps):
            f.write(json.dumps({"gene_id": item.gene_id, "question": item.question, "reference": item.answer,
                                "prediction": hyp}) + "\n")
    refs = [i.answer for i in items]
    scores = {**bleu(hyps, refs), "meteor": meteor(hyps, refs), "genes": len(items)}
    record = {
        "scores": scores,
        "paper": PAPER_SCORES,
        "settings": {
            "model": str(model_dir), "split": str(split), "genes": len(items), "batch_size": batch_size,
            "generation": {**generation, "stop": protocol.ANSWER_END},
            "prompt": {"head": protocol.CHAT_HEAD, "tail": protocol.TAIL, "questions": protocol.SUMMARY_QUESTIONS,
                       "question_seed": seed},
            "bleu": "mean of per-sentence NLTK sentence_bleu, whitespace tokens, cumulative 1..4, no smoothing",
            "meteor": "mean of per-sentence NLTK meteor_score over whitespace tokens, WordNet 3.0",
        },
    }
    (output / "scores.json").write_text(json.dumps(record, indent=1))
    return record


def predict_fasta(model_dir: Path, fasta: Path, question: str, generation: dict) -> list[tuple[str, str]]:
    from helixrun_trainer.errors import DataError
    from helixrun_trainer.formats.fasta import DNA, FastaError, read_fasta
    from helixrun_trainer.recipes.genechat import QA

    try:
        records = list(read_fasta(fasta, alphabet=DNA))
    except FastaError as exc:
        raise DataError(str(exc)) from exc
    model, recipe, device = load(model_dir)
    items = [QA(r.id, r.sequence, "summary", "", question) for r in records]
    with torch.no_grad():
        return list(zip([r.id for r in records], answer(model, recipe, device, items, generation, 1)))


def main(argv: list[str] | None = None) -> int:
    from helixrun_trainer.errors import DataError
    from helixrun_trainer.evaluation.text import WordNetMissing
    from helixrun_trainer.recipes.genechat import prepare, protocol

    parser = argparse.ArgumentParser(prog="helixrun-train {prepare,predict} genechat")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare.add_arguments(sub.add_parser("prepare", help="NCBI inputs -> train/val/test split folders"))
    p = sub.add_parser("predict", help="the paper-comparable evaluation of a split, or descriptions for a FASTA")
    p.add_argument("--model", type=Path, required=True, help="exported folder (checkpoints/final)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", type=Path, help="a split folder (e.g. DATA/test): answer and score its summary QA")
    source.add_argument("--fasta", type=Path, help="describe each gene of this FASTA file")
    p.add_argument("--output", type=Path, help="--split: folder for predictions.jsonl and scores.json (required); "
                                              "--fasta: TSV gene_id<TAB>description (default: stdout)")
    p.add_argument("--question", default=protocol.SUMMARY_QUESTIONS[0], help="--fasta: the question asked")
    p.add_argument("--beams", type=int, default=protocol.PAPER_GENERATION["num_beams"])
    p.add_argument("--max-new-tokens", type=int, default=protocol.PAPER_GENERATION["max_new_tokens"])
    p.add_argument("--seed", type=int, default=42, help="--split: seeds each gene's summary question")
    p.add_argument("--batch-size", type=int, default=1, help="--split: genes per generate call (reference: 1)")
    p.add_argument("--limit", type=int, help="--split: only the first N genes")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare.run(args)
    generation = {**protocol.PAPER_GENERATION, "num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
    try:
        if args.split:
            if not args.output:
                parser.error("--split needs --output FOLDER")
            record = evaluate_split(args.model, args.split, args.output, generation, args.seed, args.batch_size,
                                    args.limit)
            print(json.dumps(record["scores"]))
            return 0
        rows = predict_fasta(args.model, args.fasta, args.question, generation)
    except (DataError, WordNetMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = "".join(f"{gene}\t{desc}\n" for gene, desc in rows)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
