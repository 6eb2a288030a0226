"""python -m helixrun_trainer.recipes.structdiff sample --model CHECKPOINTS/final [options]

Generates peptides from an exported StructDiff (EMA weights by default): DDPM
(or DDIM with --sampler ddim) with classifier-free guidance toward a peptide
class (--class antimicrobial|antifungal|antiviral) and structure features taken
from --like sequences (their cached ESMFold features; tiny models: fake
features); without --class the class is the null one, without --like the
structure is the learned null structure (--length sets the peptide length).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load(model_dir: Path):
    from safetensors.torch import load_file

    from helixrun_trainer.recipes.structdiff import build_structdiff

    meta = json.loads((model_dir / "structdiff.json").read_text())
    model = build_structdiff(meta["spec"], meta["tiny"], str(model_dir / ".cache"), meta["method"])
    state = load_file(str(model_dir / "structdiff.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise SystemExit(f"{model_dir}: weights do not match the model: {unexpected[:5]}")
    return model.eval(), meta


def sample(model_dir: Path, num: int, length: int | None, like: list[str] | None, seed: int, guidance: float,
           steps: int | None, use_ema: bool = True, peptide_class: str | None = None,
           sampler: str = "ddpm") -> list[str]:
    from helixrun_trainer.recipes.structdiff import STANDARD, Collate, ESM_ID, decode
    from helixrun_trainer.recipes.structdiff.model import CLASSES
    from helixrun_trainer.recipes.structdiff.structure import fake_features

    model, meta = load(model_dir)
    if use_ema:
        model.swap_ema()
    generator = torch.Generator().manual_seed(seed)
    class_ids = None if peptide_class is None else torch.full((num,), CLASSES.index(peptide_class), dtype=torch.long)
    if like:
        templates = [(like[i % len(like)], 0) for i in range(num)]
        batch = Collate(fake_features if meta["tiny"] else _cached_features(meta))(templates)
        mask, structure = batch["attention_mask"], batch["structure"]
    else:
        if not length:
            raise SystemExit("give --length or --like")
        mask = torch.ones((num, length + 2), dtype=torch.long)
        structure = None  # unconditional: the model's learned null structure
    embeddings = model.sample(structure, class_ids, mask, generator, guidance=guidance, steps=steps, sampler=sampler)
    logits = model.decoder(embeddings)
    allowed = torch.full((logits.shape[-1],), float("-inf"))
    allowed[[ESM_ID[c] for c in STANDARD]] = 0.0
    ids = (logits + allowed).argmax(-1)
    return [decode(row[1:int(m.sum()) - 1].tolist()) for row, m in zip(ids, mask)]


def _cached_features(meta):
    from helixrun_trainer.recipes.structdiff.structure import StructureCache

    root = (meta["spec"]["model"].get("options") or {}).get("structureCache")
    if not root:
        raise SystemExit("--like needs the structure cache: set model.options.structureCache in the run")
    return StructureCache(Path(root)).get


def main(argv: list[str] | None = None) -> int:
    from helixrun_trainer.recipes.structdiff.model import CLASSES

    parser = argparse.ArgumentParser(prog="python -m helixrun_trainer.recipes.structdiff")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="generate peptides from an exported model")
    p.add_argument("--model", type=Path, required=True, help="exported folder (checkpoints/final)")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--length", type=int, help="peptide length (unconditional)")
    p.add_argument("--like", type=Path, help="FASTA of template peptides whose structures condition the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: every timestep)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ancestral DDPM or deterministic DDIM")
    p.add_argument("--class", dest="peptide_class", choices=CLASSES, default=None,
                   help="peptide class to generate (default: none, the null class)")
    p.add_argument("--no-ema", action="store_true", help="sample with the live weights instead of the EMA")
    p.add_argument("--output", type=Path, default=None, help="FASTA to write (default: stdout)")
    args = parser.parse_args(argv)
    like = None
    if args.like:
        from helixrun_trainer.formats.fasta import PROTEIN, read_fasta

        like = [r.sequence for r in read_fasta(args.like, alphabet=PROTEIN)]
    peptides = sample(args.model, args.num, args.length, like, args.seed, args.guidance, args.steps, not args.no_ema,
                      args.peptide_class, args.sampler)
    text = "".join(f">sample_{i}\n{p}\n" for i, p in enumerate(peptides))
    if args.output:
        args.output.write_text(text)
        print(f"wrote {len(peptides)} peptides to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
