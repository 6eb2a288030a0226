"""Recipe defaults: what a run of each recipe trains unless its spec says otherwise.

Values follow the published code and the seeds' production settings; a run's
spec overrides them field by field (lists are replaced whole). Pure data, so the
operator (no torch) and the trainer resolve a run identically.
"""

from __future__ import annotations

import copy

RECIPES = ("genechat", "metagene-classification", "esm2-mlm", "structdiff", "ptm-mamba")

DEFAULTS: dict[str, dict] = {
    "genechat": {
        "model": {
            "name": "lmsys/vicuna-13b-v1.5",
            "encoder": "zhihan1996/DNABERT-2-117M",
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]},
            # 512-nt windows overlapping by 10 nt, capped as the reference caps genes at 160 kb.
            "options": {"windowSize": 512, "windowOverlap": 10, "maxWindows": 313, "trainAdapter": True},
        },
        "data": {"format": "genechat-json", "maxSequenceLength": 512},
        "training": {
            "globalBatch": {"samples": 4},
            "optimizer": {"name": "adamw", "lr": 1e-4, "weightDecay": 0.0},
            "schedule": {"name": "cosine", "warmupSteps": 2500, "minLr": 1e-6},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 1000, "metrics": ["loss", "bleu", "meteor"]},
    },
    "metagene-classification": {
        "model": {
            "name": "metagene-ai/METAGENE-1",
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]},
            "options": {"pooling": "mean"},
        },
        "data": {"format": "fasta-labelled", "maxSequenceLength": 512},
        "training": {
            "globalBatch": {"samples": 32},
            "optimizer": {"name": "adamw", "lr": 1e-4, "weightDecay": 0.01},
            "schedule": {"name": "cosine", "warmupSteps": 100, "minLr": 0.0},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 500, "metrics": ["loss", "accuracy", "macro_f1", "mcc", "auroc"]},
        "checkpointing": {"keepBest": {"metric": "eval_macro_f1", "mode": "max"}},
    },
    "esm2-mlm": {
        "model": {"name": "facebook/esm2_t33_650M_UR50D", "method": "full", "options": {"maskProbability": 0.15}},
        "data": {"format": "fasta", "maxSequenceLength": 512},
        "training": {
            "globalBatch": {"tokens": 2_000_000},
            "optimizer": {"name": "adam", "lr": 4e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weightDecay": 0.01},
            "schedule": {"name": "linear", "warmupSteps": 2000, "finalLrFraction": 0.1},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 1000, "metrics": ["loss", "perplexity"]},
        "checkpointing": {"keepBest": {"metric": "eval_perplexity", "mode": "min"}},
    },
    "structdiff": {
        "model": {
            "name": "facebook/esm2_t6_8M_UR50D",
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
            },
        },
        "data": {"format": "csv", "maxSequenceLength": 50},
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
            "method": "full",
            # Embeddings computed on the masked input every step: precomputed ones leak the targets.
            "options": {"dModel": 768, "layers": 24, "esmLayer": 33, "esmEmbeddings": "on-the-fly"},
        },
        "data": {"format": "csv", "maxSequenceLength": 1024},
        "training": {
            "globalBatch": {"tokens": 100_000},
            "optimizer": {"name": "adamw", "lr": 2e-4, "betas": [0.9, 0.98], "weightDecay": 0.01},
            "schedule": {"name": "constant", "warmupSteps": 0},
            "gradientClip": 1.0,
            "seed": 42,
        },
        "evaluation": {"everySteps": 100, "metrics": ["loss", "perplexity"]},
        "checkpointing": {"keepBest": {"metric": "eval_loss", "mode": "min"}},
    },
}

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
