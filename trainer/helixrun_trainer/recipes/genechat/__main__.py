"""python -m helixrun_trainer.recipes.genechat {prepare,predict} ...

prepare: NCBI inputs -> train/val/test folders (prepare.py).
predict: a function description for every gene of a FASTA file, from an exported
model (checkpoints/final), with the reference's 4 beams by default:

    python -m helixrun_trainer.recipes.genechat predict --model CHECKPOINTS/final --fasta gene.fa \\
        [--question "..."] [--beams 4] [--max-new-tokens 512] [--output predictions.tsv]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load(model_dir: Path):
    """The exported GeneChat and its tokenizers (tiny: rebuilt from the folder alone)."""
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
    return model.eval(), dna_tok, text_tok, meta


class _SpecOnly:
    """What add_lora reads of a run: its spec."""

    def __init__(self, spec):
        self.spec = spec
        self.plan = None


def predict(model_dir: Path, fasta: Path, question: str, beams: int, max_new_tokens: int) -> list[tuple[str, str]]:
    from helixrun_trainer.errors import DataError
    from helixrun_trainer.formats.fasta import DNA, FastaError, read_fasta
    from helixrun_trainer.recipes.genechat import Collate, GeneChatRecipe

    model, dna_tok, text_tok, meta = load(model_dir)
    s = meta["settings"]
    collate = Collate(dna_tok, text_tok, s["window"], s["overlap"], s["max_windows"], s["max_answer"])
    recipe = GeneChatRecipe()
    recipe.text_tokenizer = text_tok
    try:
        records = list(read_fasta(fasta, alphabet=DNA))
    except FastaError as exc:
        raise DataError(str(exc)) from exc
    out = []
    for record in records:
        batch = collate([(record.id, record.sequence, question, "")])
        text = recipe.generate(model, batch, beams, max_new_tokens)[0]
        out.append((record.id, text))
    return out


def main(argv: list[str] | None = None) -> int:
    from helixrun_trainer.recipes.genechat import SUMMARY_QUESTION, prepare

    parser = argparse.ArgumentParser(prog="python -m helixrun_trainer.recipes.genechat")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare.add_arguments(sub.add_parser("prepare", help="NCBI inputs -> train/val/test split folders"))
    p = sub.add_parser("predict", help="describe the function of each gene in a FASTA file")
    p.add_argument("--model", type=Path, required=True, help="exported folder (checkpoints/final)")
    p.add_argument("--fasta", type=Path, required=True)
    p.add_argument("--question", default=SUMMARY_QUESTION)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--output", type=Path, help="TSV gene_id<TAB>description (default: stdout)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare.run(args)
    from helixrun_trainer.errors import DataError

    try:
        rows = predict(args.model, args.fasta, args.question, args.beams, args.max_new_tokens)
    except DataError as exc:
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
