"""StructDiff: structure- and class-conditioned peptide diffusion in ESM-2 embedding space.

Reference: cihebi2/StructDiff (docs/FIDELITY.md lists every setting, ours and why it differs).

Model (model.py): ESM-2 8M (model.name) with LoRA (r 16, α 32, query/value),
a structure encoder over ESMFold features, a cross-attention denoiser with
position embeddings and rotary self-attention (options.denoiserHidden/Layers/
Heads: 256/6/8), conditioned on the peptide class; ε-prediction MSE plus the
embedding->residue decoder's CE. options.timesteps (1000), noiseSchedule
sqrt|linear|cosine from betaStart 1e-4 to betaEnd 0.02 (sqrt: the reference's
sqrt(linspace(β_start², β_end², T))); EMA options.emaDecay 0.9999 carried in
checkpoints. Stage separation: the ε loss does not reach the ESM encoder unless
options.diffusionTrainsEncoder: true. Optimizer and schedule are the runtime's
from the spec (AdamW 1e-4, wd 0.01, cosine to 1e-6, clip 1.0).

Data (data.format csv; data.path relative to the data volume): column
options.sequenceColumn (default `sequence`), peptides of the 20 standard
residues from options.minLength (5) to data.maxSequenceLength (50) residues;
column options.labelColumn (default `label`, optional): the peptide class, 0/1/2
or antimicrobial/antifungal/antiviral as the reference's dataset.py, empty for
none. An empty or non-standard sequence or an unknown class is a DataError
naming the file and row; options.onError: skip drops and counts it instead; a
shorter or longer one is always skipped and counted (logged). Split: a hash of
the sequence, options.evalFraction (0.1) to eval, the same every run.

Structures: stage 1 folds every sequence not yet in the cache with ESMFold
(options.foldingModel, fp16, chunk 128; needs a GPU) into
options.structureCache (default <model cache>/structdiff-structures, keyed by
sequence hash, shared by restarts and runs); training reads only the cache.
Tiny: deterministic fake features (structure.fake_features).

Evaluation: loss (MSE + CE at fixed draws), mse (1.0 at init: the denoiser's
output starts at zero), residue recovery of the decoder, and the
generated-peptide scores (metrics.py: validity, uniqueness, diversity, novelty,
training_similarity) of options.evalSamples (64) peptides generated like the
first eval peptides (their length, class and structure) with DDIM
(options.evalSteps 50) and guidance options.guidanceScale (1.5), from the live
weights. Sampling: `helixrun-train sample structdiff --model CHECKPOINTS/final
--num 8 --length 20 [--class antimicrobial] [--like FASTA] [--sampler ddim --steps 50]
--output peptides.fasta` (EMA weights).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from helixrun_trainer.errors import DataError
from helixrun_trainer.formats.table import sequence_rows
from helixrun_trainer.recipes.adapters import method_of
from helixrun_trainer.recipes.base import LossOutput, RecipeBase, RecipeData, in_eval_split, resolve_data_path
from helixrun_trainer.recipes.structdiff.metrics import peptide_scores
from helixrun_trainer.recipes.structdiff.model import CLASSES, NO_CLASS, StructDiff
from helixrun_trainer.recipes.structdiff.structure import StructureCache, fake_features, fold_missing

log = logging.getLogger(__name__)

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
# ESM-2's alphabet: <cls> 0, <pad> 1, <eos> 2, then residues in this order from id 4.
ESM_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"
ESM_ID = {c: i + 4 for i, c in enumerate(ESM_LETTERS)}
CLS, PAD, EOS = 0, 1, 2
# Classifier-free guidance: each condition is replaced by its null for this share of training samples
# (the reference's cfg_dropout_prob for the class; the same for the structure).
CONDITION_DROPOUT = 0.1
CLASS_OF = {**{name: i for i, name in enumerate(CLASSES)}, **{str(i): i for i in range(len(CLASSES))}, "": NO_CLASS}


def encode(sequence: str) -> list[int]:
    return [CLS, *(ESM_ID[c] for c in sequence), EOS]


def decode(ids: Iterable[int]) -> str:
    return "".join(ESM_LETTERS[i - 4] for i in ids if 4 <= i < 4 + len(ESM_LETTERS))


def decode_every_position(ids: Iterable[int]) -> str:
    """One letter per position; a special token becomes '?' (so the peptide counts as invalid)."""
    return "".join(ESM_LETTERS[i - 4] if 4 <= i < 4 + len(ESM_LETTERS) else "?" for i in ids)


def read_peptides(path: Path, column: str, label_column: str, min_len: int, max_len: int,
                  on_error: str) -> list[tuple[str, int]]:
    """[(peptide, class)] of a CSV; errors name the file and row."""
    out, skipped = [], {"too-short": 0, "too-long": 0, "invalid": 0}
    for row_number, row in sequence_rows(path, column):
        seq = (row.get(column) or "").strip().upper()
        label = (row.get(label_column) or "").strip().lower()
        bad = sorted(set(seq) - set(STANDARD))
        if not seq or bad or label not in CLASS_OF:
            if on_error == "skip":
                skipped["invalid"] += 1
                continue
            what = ("empty sequence" if not seq else f"non-standard residues {''.join(bad)!r}" if bad else
                    f"{label_column} {label!r} is none of 0/1/2 or {'/'.join(CLASSES)}")
            raise DataError(f"{path}:{row_number}: {what} (StructDiff takes the 20 standard residues and the "
                            f"reference's three peptide classes)")
        if len(seq) < min_len or len(seq) > max_len:
            skipped["too-short" if len(seq) < min_len else "too-long"] += 1
            continue
        out.append((seq, CLASS_OF[label]))
    if any(skipped.values()):
        log.warning("%s: skipped %d too short (< %d), %d too long (> %d) and %d invalid peptides", path,
                    skipped["too-short"], min_len, skipped["too-long"], max_len, skipped["invalid"])
    if not out:
        raise DataError(f"{path}: no usable peptides")
    return out


def tiny_peptides(seed: int, n: int = 200) -> list[tuple[str, int]]:
    """Amphipathic-looking peptides of 8-24 residues; each class draws from motifs of its own (learnable)."""
    rng = random.Random(seed)
    motifs = {0: ["KLLK", "RRWW", "LKKL"], 1: ["GIGK", "FLPL", "GLFD"], 2: ["AKKA", "WEEW", "DPTD"]}
    out = []
    for _ in range(n):
        label = rng.randrange(len(CLASSES))
        length = rng.randint(8, 24)
        seq = ""
        while len(seq) < length:
            seq += rng.choice(motifs[label]) if rng.random() < 0.9 else rng.choice(STANDARD)
        out.append((seq[:length], label))
    return out


class Collate:
    def __init__(self, features):
        self.features = features  # sequence -> [L, FEATURES]

    def __call__(self, samples: list[tuple[str, int]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        from helixrun_trainer.recipes.structdiff.structure import FEATURES

        width = max(len(s) for s, _ in samples) + 2
        ids = torch.full((len(samples), width), PAD, dtype=torch.long)
        structure = torch.zeros((len(samples), width, FEATURES))
        for row, (seq, _) in enumerate(samples):
            ids[row, :len(seq) + 2] = torch.tensor(encode(seq))
            structure[row, 1:len(seq) + 1] = self.features(seq)
        attention = (ids != PAD).long()
        residues = attention.clone()
        residues[:, 0] = 0
        residues[torch.arange(len(samples)), torch.tensor([len(s) + 1 for s, _ in samples])] = 0
        return {"input_ids": ids, "attention_mask": attention, "residue_mask": residues, "structure": structure,
                "class_ids": torch.tensor([label for _, label in samples], dtype=torch.long)}


class StructDiffRecipe(RecipeBase):
    name = "structdiff"

    def __init__(self):
        self.tiny = False
        self.training_peptides: list[str] = []
        self.generation: dict = {}

    @staticmethod
    def options(cfg) -> dict:
        return dict((cfg.spec.get("model") or {}).get("options") or {})

    def build_model(self, cfg, tiny: bool) -> nn.Module:
        return build_structdiff(cfg.spec, tiny, cfg.paths.model_cache, method_of(cfg), cfg)

    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        spec = cfg.spec
        data = spec.get("data") or {}
        opts = data.get("options") or {}
        max_len = int(data.get("maxSequenceLength") or 50)
        fraction = float(opts.get("evalFraction", 0.1))
        self.tiny = tiny
        if tiny:
            peptides = [(p[:max_len], label) for p, label in tiny_peptides((spec.get("training") or {}).get("seed", 42))]
            features = fake_features
            source = "tiny"
        else:
            path = resolve_data_path(cfg, data_dir)
            peptides = read_peptides(path, opts.get("sequenceColumn", "sequence"), opts.get("labelColumn", "label"),
                                     int(opts.get("minLength", 5)), max_len, opts.get("onError", "raise"))
            model_opts = self.options(cfg)
            root = Path(model_opts.get("structureCache") or Path(cfg.paths.model_cache) / "structdiff-structures")
            cache = StructureCache(root)
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            folded = fold_missing(cache, [p for p, _ in peptides], model_opts.get("foldingModel", "facebook/esmfold_v1"),
                                  cfg.paths.model_cache, rank, world)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            log.info("structures: %d folded now, %d from the cache %s", folded, len(peptides) - folded, root)
            features = cache.get
            source = str(path)
        train = [p for p in peptides if not in_eval_split(p[0], fraction)]
        evals = [p for p in peptides if in_eval_split(p[0], fraction)]
        if not train:
            raise DataError(f"{source}: no training peptides")
        self.training_peptides = [p for p, _ in train]
        model_opts = self.options(cfg)
        self.generation = {"samples": int(model_opts.get("evalSamples", 64)), "steps": int(model_opts.get("evalSteps", 50)),
                           "guidance": float(model_opts.get("guidanceScale", 1.5))}
        return RecipeData(train=train, eval=evals or None, collate=Collate(features),
                          lengths=[len(p) + 2 for p, _ in train], eval_lengths=[len(p) + 2 for p, _ in evals],
                          split_mapping={"source": source, "rule": f"blake2b(sequence) < {fraction} -> eval",
                                         "train": len(train), "eval": len(evals)})

    @staticmethod
    def draws(model, batch, generator: torch.Generator):
        """Timesteps, noise and the two condition dropouts: all from the runtime's generator, drawn on CPU."""
        core = getattr(model, "module", model)
        b, width = batch["input_ids"].shape
        embed_dim = core.decoder.in_features
        device = batch["input_ids"].device
        t = torch.randint(core.timesteps, (b,), generator=generator).to(device)
        noise = torch.randn((b, width, embed_dim), generator=generator).to(device)
        drop_structure = (torch.rand(b, generator=generator) < CONDITION_DROPOUT).to(device)
        drop_class = (torch.rand(b, generator=generator) < CONDITION_DROPOUT).to(device)
        return t, noise, drop_structure, drop_class

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        t, noise, drop_structure, drop_class = self.draws(model, batch, generator)
        classes = torch.where(drop_class, torch.full_like(batch["class_ids"], NO_CLASS), batch["class_ids"])
        mse, ce, _ = model(batch["input_ids"], batch["attention_mask"], batch["residue_mask"], batch["structure"],
                           classes, t, noise, drop_structure)
        n = int(batch["input_ids"].shape[0])
        return LossOutput(loss=mse + ce, loss_units=n, num_tokens=int(batch["attention_mask"].sum()), num_samples=n)

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        from helixrun_trainer.data import mix_seed

        totals = {"loss": 0.0, "mse": 0.0}
        correct = residues = samples = 0
        generated: list[str] = []
        for i, batch in enumerate(eval_batches):
            gen = torch.Generator().manual_seed(mix_seed("structdiff-eval", i))
            t, noise, _, _ = self.draws(model, batch, gen)
            mse, ce, logits = model(batch["input_ids"], batch["attention_mask"], batch["residue_mask"],
                                    batch["structure"], batch["class_ids"], t, noise, None)
            n = int(batch["input_ids"].shape[0])
            totals["loss"] += float(mse + ce) * n
            totals["mse"] += float(mse) * n
            mask = batch["residue_mask"].bool()
            correct += int((logits.argmax(-1)[mask] == batch["input_ids"][mask]).sum())
            residues += int(mask.sum())
            samples += n
            if len(generated) < self.generation.get("samples", 0):
                generated += self.generate_like(model, batch, gen)
        out = {k: v / max(samples, 1) for k, v in totals.items()}
        out["recovery"] = correct / max(residues, 1)
        if generated:
            out.update(peptide_scores(generated[:self.generation["samples"]], self.training_peptides))
        return out

    def generate_like(self, model, batch: dict[str, Any], generator: torch.Generator) -> list[str]:
        """Peptides generated with each eval peptide's length, class and structure (DDIM, guided), decoded at
        every residue position without restricting the decoder (so an invalid peptide shows)."""
        embeddings = model.sample(batch["structure"], batch["class_ids"], batch["attention_mask"], generator,
                                  guidance=self.generation["guidance"], steps=self.generation["steps"], sampler="ddim")
        ids = model.decoder(embeddings).argmax(-1).cpu()
        return [decode_every_position(row[1:int(length) - 1].tolist())
                for row, length in zip(ids, batch["attention_mask"].sum(1).cpu())]

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        """Trainable weights plus the EMA buffers and their update count."""
        state = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        state.update({k: b.detach() for k, b in model.named_buffers() if k.startswith("ema")})
        return state

    def export(self, model, cfg, out_dir: Path) -> None:
        """final/: structdiff.safetensors (trainable + EMA; tiny: everything) and structdiff.json to rebuild it."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        model.update_ema() if model.training else None
        state = model.state_dict() if self.tiny else self.trainable_state(model)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out_dir / "structdiff.safetensors"))
        (out_dir / "structdiff.json").write_text(json.dumps({"spec": {"model": cfg.spec.get("model"), "data": {
            "maxSequenceLength": (cfg.spec.get("data") or {}).get("maxSequenceLength")}}, "tiny": self.tiny,
            "method": method_of(cfg)}, indent=1))


def build_structdiff(spec: dict, tiny: bool, model_cache: str, method: str, cfg=None) -> StructDiff:
    model_spec = spec.get("model") or {}
    opts = dict(model_spec.get("options") or {})
    if tiny:
        from transformers import EsmConfig, EsmModel

        esm = EsmModel(EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, position_embedding_type="rotary", token_dropout=False,
                                 pad_token_id=PAD, mask_token_id=32, max_position_embeddings=1026),
                       add_pooling_layer=False)
        hidden, layers, heads = 32, 2, 4
    else:
        from transformers import EsmModel

        esm = EsmModel.from_pretrained(model_spec.get("name") or "facebook/esm2_t6_8M_UR50D",
                                       revision=model_spec.get("revision"), cache_dir=model_cache,
                                       add_pooling_layer=False, dtype=torch.float32)
        hidden, layers = int(opts.get("denoiserHidden", 256)), int(opts.get("denoiserLayers", 6))
        heads = int(opts.get("denoiserHeads", 8))
    if method in ("lora", "qlora"):
        lora = model_spec.get("lora") or {}
        esm = _esm_lora(esm, lora)
    max_positions = int((spec.get("data") or {}).get("maxSequenceLength") or 50) + 2  # + <cls>, <eos>
    model = StructDiff(esm, esm.config.hidden_size if hasattr(esm, "config") else 32, hidden, layers, heads,
                       int(opts.get("timesteps", 1000)), opts.get("noiseSchedule", "sqrt"),
                       float(opts.get("betaStart", 1e-4)), float(opts.get("betaEnd", 0.02)),
                       float(opts.get("emaDecay", 0.9999)), max_positions,
                       diffusion_trains_encoder=bool(opts.get("diffusionTrainsEncoder", False)))
    model.init_ema()
    return model


def _esm_lora(esm, lora: dict):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=float(lora.get("alpha", 32)),
                        lora_dropout=float(lora.get("dropout", 0.1)),
                        target_modules=list(lora.get("targetModules") or ["query", "value"]), bias="none")
    return get_peft_model(esm, config)


RECIPE = StructDiffRecipe()
