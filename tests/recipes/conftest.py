"""Fixtures for the recipe tests: minimal TrainingRuns per recipe, tiny runs as processes, in-process configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Tests build tiny models and never download: fail fast instead of retrying a hub that cannot be reached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Minimal runs: production names (never loaded with --tiny), settings that make 12 tiny steps learn something.
RUNS = {
    "esm2-mlm": """\
spec:
  recipe: esm2-mlm
  model: {name: facebook/esm2_t33_650M_UR50D, method: full}
  data: {path: uniref90.fasta, format: fasta, options: {clusters: uniref50-members.tsv}}
  hardware: {pool: a800, gpusPerNode: 1}
  training: {maxSteps: 100, globalBatch: {tokens: 2000000}}
  evaluation: {everySteps: 100, metrics: [loss, perplexity]}
""",
    "metagene-classification": """\
spec:
  recipe: metagene-classification
  model: {name: metagene-ai/METAGENE-1, method: lora}
  data: {path: reads, format: fasta-labelled, maxSequenceLength: 512}
  hardware: {pool: rtx4090, gpusPerNode: 1}
  training: {maxSteps: 100, globalBatch: {samples: 32}, optimizer: {name: adamw, lr: 1.0e-2}}
  checkpointing: {everySteps: 500, keepBest: {metric: eval_macro_f1, mode: max}}
  evaluation: {everySteps: 500, metrics: [loss, accuracy, macro_f1, mcc, auroc]}
""",
    "ptm-mamba": """\
spec:
  recipe: ptm-mamba
  model: {encoder: facebook/esm2_t33_650M_UR50D, method: full}
  data: {path: mamba.csv, format: csv}
  hardware: {pool: a800, gpusPerNode: 1}
  training: {maxSteps: 100, globalBatch: {tokens: 100000}, optimizer: {name: adamw, lr: 3.0e-3}}
  evaluation: {everySteps: 100, metrics: [loss, perplexity, accuracy]}
""",
    "structdiff": """\
spec:
  recipe: structdiff
  model: {name: facebook/esm2_t6_8M_UR50D, method: lora}
  data: {path: peptides.csv, format: csv, maxSequenceLength: 50}
  hardware: {pool: rtx4090, gpusPerNode: 1}
  training: {maxSteps: 100, globalBatch: {samples: 32}, optimizer: {name: adamw, lr: 3.0e-3, weightDecay: 0.01}}
  evaluation: {everySteps: 100, metrics: [loss]}
""",
    "genechat": """\
spec:
  recipe: genechat
  model: {name: lmsys/vicuna-13b-v1.5, encoder: zhihan1996/DNABERT-2-117M, method: lora}
  data: {path: ncbi, format: genechat-json}
  hardware: {pool: a800, gpusPerNode: 1}
  training: {maxSteps: 100, globalBatch: {samples: 4}, optimizer: {name: adamw, lr: 1.0e-2}}
  evaluation: {everySteps: 100, metrics: [loss, bleu, meteor]}
""",
}

# What each recipe's final/ export holds as weights.
FINAL_WEIGHTS = {
    "metagene-classification": "model.pt",
    "ptm-mamba": "model.safetensors",
    "structdiff": "structdiff.safetensors",
    "genechat": "genechat.safetensors",
}


def run_yaml(recipe: str, name: str | None = None) -> str:
    name = name or recipe.replace("-classification", "") + "-test"
    return f"apiVersion: helixrun.io/v1alpha1\nkind: TrainingRun\nmetadata: {{name: {name}}}\n" + RUNS[recipe]


@pytest.fixture
def run_file(tmp_path):
    def make(recipe: str) -> Path:
        path = tmp_path / f"run-{recipe}.yaml"
        path.write_text(run_yaml(recipe))
        return path

    return make


def tiny_config(recipe: str, workdir: Path, *sets: str):
    """The ResolvedRun `helixrun-train --local --tiny` would build, in-process."""
    import yaml

    from helixrun_trainer.cli import resolve_local

    return resolve_local(yaml.safe_load(run_yaml(recipe)), workdir, tiny=True, sets=sets)


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "records" / "metrics.jsonl").read_text().splitlines()]


def final_weights(workdir: Path, recipe: str) -> dict:
    import torch

    path = workdir / "checkpoints" / "final" / FINAL_WEIGHTS[recipe]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu")
