"""Recipe defaults: what a run of each recipe trains unless its spec says otherwise.

Values follow the published code and the seeds' production settings; a run's
spec overrides them field by field (lists are replaced whole). Pure data, so the
operator (no torch) and the trainer resolve a run identically.
"""

from __future__ import annotations

import copy

RECIPES = ("genechat", "metagene-classification", "esm2-mlm", "structdiff", "ptm-mamba")

# model.init each recipe's model builder honours. ESM-2 pretrains from scratch or continues from released
# weights; METAGENE-1 fine-tunes released weights or trains the architecture from scratch; GeneChat and StructDiff
# adapt released models only; PTM-Mamba's bidirectional Mamba is always built fresh (its ESM-2 encoder is
# released and frozen either way).
INITS: dict[str, tuple[str, ...]] = {
    "genechat": ("pretrained",),
    "metagene-classification": ("pretrained", "scratch"),
    "esm2-mlm": ("scratch", "pretrained"),
    "structdiff": ("pretrained",),
    "ptm-mamba": ("scratch",),
}

DEFAULTS: dict[str, dict] = {
    "genechat": {
        "model": {
            "name": "lmsys/vicuna-13b-v1.5",
            "encoder": "zhihan1996/DNABERT-2-117M",
            "init": "pretrained",
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]},
            # The reference's windows (every 512 nt, reaching 10 nt back; 313 at most, genes cut at 160 kb), its
            # frozen adapter (released configs: freeze_adaptor) and its 512-token answer cap (max_txt_len).
            "options": {"windowSize": 512, "windowOverlap": 10, "maxWindows": 313, "trainAdapter": False,
                        "maxTextTokens": 512},
        },
        "data": {"format": "genechat-json", "maxSequenceLength": 512},
        "training": {
            # genechat_stage1.yaml in optimizer steps (4 batch-1 iterations each): warmup 2,500 iterations from
            # 1e-6, cosine to 1e-6 over max_iters 2,000,000; no gradient clipping.
            "globalBatch": {"samples": 4},
            "optimizer": {"name": "adamw", "lr": 1e-4, "weightDecay": 0.0},
            "schedule": {"name": "cosine", "warmupSteps": 625, "warmupStartLr": 1e-6, "minLr": 1e-6,
                         "decaySteps": 500_000},
            "seed": 42,
        },
        "evaluation": {"everySteps": 1000, "metrics": ["loss", "bleu", "meteor"]},
    },
    "metagene-classification": {
        "model": {
            "name": "metagene-ai/METAGENE-1",
            "init": "pretrained",
            "method": "lora",
            # LoRA on q/v (m2lab-ntu's rtx4090 config; its default.yaml adds k/o and dropout 0.1); dropout 0.1
            # before the head as its modules/modeling.py.
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]},
            "options": {"pooling": "mean", "headDropout": 0.1},
        },
        "data": {"format": "fasta-labelled", "maxSequenceLength": 512},
        "training": {
            "globalBatch": {"samples": 32},  # the reference's default.yaml: 128; its rtx4090 config: 8
            "optimizer": {"name": "adamw", "lr": 2e-4, "betas": [0.9, 0.999], "weightDecay": 0.01},
            "schedule": {"name": "linear", "warmupSteps": 100, "finalLrFraction": 0.0},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 500, "metrics": ["loss", "accuracy", "macro_f1", "mcc", "auroc"],
                       "earlyStopping": {"metric": "eval_macro_f1", "mode": "max", "patience": 3}},
        "checkpointing": {"keepBest": {"metric": "eval_macro_f1", "mode": "max"}},
    },
    "esm2-mlm": {
        # ESM-2 paper A.1 and BioNeMo's train_esm2.py: pretraining from fresh weights, decoupled weight decay,
        # WarmupAnnealDecayHold (2,000 warmup steps, linear decay to a tenth at 90% of training, then held).
        "model": {"name": "facebook/esm2_t33_650M_UR50D", "init": "scratch", "method": "full",
                  "options": {"maskProbability": 0.15}},
        "data": {"format": "fasta", "maxSequenceLength": 512},
        "training": {
            "globalBatch": {"tokens": 2_000_000},
            "optimizer": {"name": "adamw", "lr": 4e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weightDecay": 0.01},
            "schedule": {"name": "linear-hold", "warmupSteps": 2000, "finalLrFraction": 0.1},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 1000, "metrics": ["loss", "perplexity"]},
        "checkpointing": {"keepBest": {"metric": "eval_perplexity", "mode": "min"}},
    },
    "structdiff": {
        "model": {
            "name": "facebook/esm2_t6_8M_UR50D",
            "init": "pretrained",
            "method": "lora",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.1, "targetModules": ["query", "value"]},
            "options": {
                "foldingModel": "facebook/esmfold_v1",
                "timesteps": 1000,
                "betaStart": 1e-4,
                "betaEnd": 0.02,
                "noiseSchedule": "sqrt",
                "emaDecay": 0.9999,
                "denoiserHidden": 256,
                "denoiserLayers": 6,
                "denoiserHeads": 8,
                # separated_training.py: the ε loss never trains the sequence encoder.
                "diffusionTrainsEncoder": False,
                # Evaluation generates peptides (DDIM, the reference's ddim_steps 50; guidance as
                # peptide_esmfold_config.yaml) and scores them as structdiff/metrics/ does.
                "evalSamples": 64,
                "evalSteps": 50,
                "guidanceScale": 1.5,
            },
        },
        # dataset.py: columns sequence and label (0 antimicrobial, 1 antifungal, 2 antiviral), 5-50 residues.
        "data": {"format": "csv", "maxSequenceLength": 50, "options": {"labelColumn": "label", "minLength": 5}},
        "training": {
            "globalBatch": {"samples": 32},
            "optimizer": {"name": "adamw", "lr": 1e-4, "weightDecay": 0.01},
            "schedule": {"name": "cosine", "warmupSteps": 1000, "minLr": 1e-6},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 1000, "metrics": ["loss"]},
    },
    "ptm-mamba": {
        "model": {
            "name": "ChatterjeeLab/PTM-Mamba",
            "encoder": "facebook/esm2_t33_650M_UR50D",
            "init": "scratch",
            "method": "full",
            # Embeddings computed on the masked input every step: precomputed ones leak the targets.
            "options": {"dModel": 768, "layers": 24, "esmLayer": 33, "esmEmbeddings": "on-the-fly"},
        },
        # Batches shuffled each epoch (batchOrder length-ascending is the reference's order; docs/FIDELITY.md).
        "data": {"format": "csv", "maxSequenceLength": 1024,
                 "options": {"layout": "sequences", "batchOrder": "shuffled", "tooLong": "skip"}},
        "training": {
            "globalBatch": {"tokens": 100_000},
            # train.py: AdamW, Esm2LRScheduler(on_use=False) = constant, no gradient clipping.
            "optimizer": {"name": "adamw", "lr": 2e-4, "betas": [0.9, 0.98], "weightDecay": 0.01},
            "schedule": {"name": "constant", "warmupSteps": 0},
            "seed": 42,
        },
        "evaluation": {"everySteps": 100, "metrics": ["loss", "perplexity", "accuracy"]},
        "checkpointing": {"keepBest": {"metric": "eval_loss", "mode": "min"}},
    },
}

# What a smoke run (spec.smokeTest, `helixrun-train --tiny`) of a recipe trains with over the smoke budget: its toy
# models learn their generated data within the budget only at a toy model's learning rate and batch (measured for
# PTM-Mamba and StructDiff: docs/FIDELITY.md).
SMOKE: dict[str, dict] = {
    # ten times the published rates (4e-4, 2e-4), with which 40 steps leave the tiny models at perplexity 20.3
    # (chance 20) and accuracy 0.35 (chance 0.33); at these, 5.0 and 0.95 (docs/FIDELITY.md)
    "esm2-mlm": {"training": {"optimizer": {"lr": 4e-3}}},
    "metagene-classification": {"training": {"optimizer": {"lr": 2e-3}}},
    "ptm-mamba": {"training": {"optimizer": {"lr": 1e-2}, "globalBatch": {"tokens": 1024}}},
    "structdiff": {"model": {"options": {"evalSamples": 16, "evalSteps": 10}},
                   "training": {"optimizer": {"lr": 1e-2}, "globalBatch": {"samples": 32}}},
}

_COUNT = {"type": "integer", "minimum": 1}
_NAME = {"type": "string", "minLength": 1}
# The recipe options (model.options, data.options) each recipe's trainer reads, as JSON Schema: resolve refuses
# an unknown option or a bad value by field before a pod starts (recipes not listed take any options).
OPTION_SCHEMAS: dict[str, dict[str, dict[str, dict]]] = {
    "ptm-mamba": {
        "model": {
            "dModel": _COUNT, "layers": _COUNT, "esmLayer": _COUNT,
            "esmEmbeddings": {"enum": ["on-the-fly", "precomputed"]},
        },
        "data": {
            # sequences: one PTM-annotated sequence per row; sites: the reference's ptm_labels.csv.
            "layout": {"enum": ["sequences", "sites"]},
            "sequenceColumn": _NAME, "idColumn": _NAME, "positionColumn": _NAME, "tokenColumn": _NAME,
            "valSize": {"type": "integer", "minimum": 0}, "testSize": {"type": "integer", "minimum": 0},
            "splitSeed": {"type": "integer", "minimum": 0},
            "tooLong": {"enum": ["skip", "error"]},
            "batchOrder": {"enum": ["shuffled", "length-ascending"]},
            "embeddingsDir": _NAME, "embedBatchSize": _COUNT,
        },
    },
    "structdiff": {
        "model": {
            "foldingModel": _NAME, "structureCache": _NAME,
            "timesteps": {"type": "integer", "minimum": 2},
            "betaStart": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "betaEnd": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "noiseSchedule": {"enum": ["sqrt", "linear", "cosine"]},
            "emaDecay": {"type": "number", "minimum": 0, "maximum": 1},
            "denoiserHidden": _COUNT, "denoiserLayers": _COUNT, "denoiserHeads": _COUNT,
            "diffusionTrainsEncoder": {"type": "boolean"},
            "evalSamples": {"type": "integer", "minimum": 0}, "evalSteps": _COUNT,
            "guidanceScale": {"type": "number", "minimum": 0},
        },
        "data": {
            "sequenceColumn": _NAME, "labelColumn": _NAME, "minLength": _COUNT,
            "evalFraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "onError": {"enum": ["raise", "skip"]},
        },
    },
    "esm2-mlm": {
        "model": {"maskProbability": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        # clusters: the UniRef50 -> UniRef90 membership file (esm2_mlm.py, docs/FIDELITY.md)
        "data": {"clusters": _NAME, "evalFraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}},
    },
    "metagene-classification": {
        "model": {"pooling": {"enum": ["mean"]}, "headDropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}},
        "data": {
            "labels": _NAME, "tokenizer": _NAME,
            "evalFraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "onError": {"enum": ["raise", "skip"]},
        },
    },
}


def option_problems(spec: dict) -> list[tuple[str, str]]:
    """(field, problem) for each model.options / data.options entry the (merged) spec's recipe does not take."""
    import jsonschema

    problems = []
    for section, options in OPTION_SCHEMAS.get(spec["recipe"], {}).items():
        given = (spec.get(section) or {}).get("options") or {}
        for key, value in given.items():
            field = f"spec.{section}.options.{key}"
            if key not in options:
                problems.append((field, f"recipe {spec['recipe']} has no such option (known: {', '.join(options)})"))
                continue
            error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(options[key]).iter_errors(value))
            if error is not None:
                problems.append((field, error.message))
    betas = [((spec.get("model") or {}).get("options") or {}).get(k, d) for k, d in (("betaStart", 1e-4), ("betaEnd", 0.02))]
    if spec["recipe"] == "structdiff" and all(type(b) in (int, float) for b in betas) and betas[0] >= betas[1]:
        problems.append(("spec.model.options.betaEnd", "must be larger than betaStart"))
    return problems


# Every recipe shares these unless it or the run says otherwise.
COMMON: dict = {
    "hardware": {"nodes": 1, "gpusPerNode": 1},
    "training": {"precision": "auto", "logEverySteps": 10},
    "checkpointing": {
        "everySteps": 500,
        "keepLast": 3,
        "keepBest": {"metric": "eval_loss", "mode": "min"},
        "retention": "Retain",
    },
    "metrics": {"port": 9400},
    "backoffLimit": 10,
    "suspend": False,
}


def merge(base: dict, override: dict) -> dict:
    """Deep-merge override onto base; mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def unsupported_init(spec: dict) -> str | None:
    """Why the (merged) spec's model.init is not one its recipe's model builder honours, or None."""
    init, allowed = (spec.get("model") or {}).get("init"), INITS[spec["recipe"]]
    if init is None or init in allowed:
        return None
    return f"recipe {spec['recipe']} trains from {' or '.join(allowed)} weights, not {init}"


def with_defaults(spec: dict) -> dict:
    """The run's spec with its recipe's defaults and the common ones filled in."""
    merged = merge(merge(COMMON, DEFAULTS[spec["recipe"]]), spec)
    model = merged.get("model", {})
    if model.get("method") == "full" and "lora" not in spec.get("model", {}):
        model.pop("lora", None)  # the recipe's adapter defaults do not apply to full training
    own_batch = spec.get("training", {}).get("globalBatch")
    if own_batch:  # samples and tokens exclude each other: the run's choice replaces the recipe's whole
        merged["training"]["globalBatch"] = copy.deepcopy(own_batch)
    return merged
