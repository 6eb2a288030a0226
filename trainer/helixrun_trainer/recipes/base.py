"""The Recipe interface: what a recipe provides and what the runtime does for it.

A recipe is data + model + objective + evaluation + export. It never owns the
loop, the optimizer, precision, distribution, checkpoints or metrics: the
runtime (helixrun_trainer.loop) does, the same way for every recipe.

    recipe = get_recipe(cfg.spec["recipe"])
    model  = recipe.build_model(cfg, tiny)                  # nn.Module on CPU, frozen parts requires_grad=False
    data   = recipe.build_data(cfg, tiny, data_dir)          # RecipeData
    batch  = data.collate([data.train[i] for i in idx], gen) # runtime picks idx (sample or token-budget batches)
    out    = recipe.compute_loss(model, batch, gen)          # LossOutput; runtime does backward/accumulation
    scores = recipe.evaluate(model, eval_batches)            # {"loss": .., "perplexity": ..} (no "eval_" prefix)
    recipe.export(model, cfg, out_dir)                       # final/ in Hugging Face format
    state  = recipe.trainable_state(model)                   # what a checkpoint holds of the model

Rules the runtime relies on (exact resume depends on them):
- Randomness in collate (MLM masking, crops) and in compute_loss (diffusion
  timesteps/noise) must come ONLY from the `torch.Generator` passed in. The
  runtime seeds it from (seed, epoch, batch index, rank), so a resumed run draws
  the same numbers. It is a CPU generator: draw on CPU, then `.to(device)`.
  Dropout may use the global torch RNG: the runtime checkpoints it per rank.
- Datasets are map-style (len + __getitem__), deterministic given the seed;
  `tiny=True` generates small data from the seed and never touches the network.
- `LossOutput.loss` is the MEAN over the micro-batch's `loss_units` (masked
  tokens for MLM, samples for classification). The runtime weights each
  micro-batch by `loss_units`, so accumulation over uneven batches and ranks
  gives the same gradient as one big batch.
- `batch` is whatever collate returns (usually a dict of tensors); the runtime
  moves tensors (nested in dicts/lists/tuples) to the device before compute_loss.
- build_model returns the model on CPU in fp32 for trainable weights (the
  runtime runs autocast per the plan); a frozen quantized base may be in its
  own dtype. Gradient checkpointing: the runtime calls
  `model.gradient_checkpointing_enable()` when the plan asks and it exists.
- Parameters that take no part in the loss must have requires_grad=False
  (DDP fails on unused parameters); a recipe whose forward skips parameters
  only sometimes sets the attribute `find_unused_parameters = True`.
- evaluate runs under torch.no_grad() and model.eval() (the runtime sets both
  and restores train mode); every rank evaluates the whole eval set on the
  unwrapped model, so results agree across ranks without a recipe-side reduce.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:  # helixrun core is a dependency; imported for types only
    from helixrun.resolve import ResolvedRun


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, mean over loss_units of this micro-batch
    loss_units: int  # denominator of that mean (masked tokens, samples, ...): accumulation weight
    num_tokens: int  # input tokens in the micro-batch (throughput: tokens/s)
    num_samples: int  # sequences in the micro-batch (throughput: samples/s)


@dataclass
class RecipeData:
    train: Sequence[Any]  # map-style: len() and [i]
    eval: Sequence[Any] | None
    collate: Callable[[list[Any], torch.Generator], Any]  # (samples, generator) -> batch
    # Tokens per train sample (after truncation): with them, and a plan counting
    # tokens, the runtime makes token-budget batches (sort by length, flush at the
    # budget, shuffle batches by (seed, epoch)); without them, fixed-size batches.
    lengths: Sequence[int] | None = None
    eval_lengths: Sequence[int] | None = None
    # For split datasets: which source records went to train/eval; the runtime
    # writes it to records/split_mapping.json.
    split_mapping: dict[str, Any] | None = None
    # True: the batches in ascending length, the same order every epoch (a reference
    # that trains so, e.g. PTM-Mamba's SequenceLengthSampler), instead of shuffled.
    length_sorted: bool = False


@runtime_checkable
class Recipe(Protocol):
    name: str

    def build_model(self, cfg: "ResolvedRun", tiny: bool) -> torch.nn.Module:
        """Production: from_pretrained(spec.model.name, revision) into cfg.paths.model_cache with the plan's
        method (full/LoRA/QLoRA). Tiny: random init (seeded by the runtime) of a tiny config of the same
        architecture."""
        ...

    def build_data(self, cfg: "ResolvedRun", tiny: bool, data_dir: Path) -> RecipeData:
        """Read spec.data (format, path relative to data_dir unless absolute, maxSequenceLength); tiny: generate
        a small deterministic dataset from spec.training.seed (data_dir is a scratch folder then)."""
        ...

    def compute_loss(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        ...

    def evaluate(self, model: torch.nn.Module, eval_batches: Iterable[Any]) -> dict[str, float]:
        """Keys without prefix ("loss", "perplexity", "bleu", "macro_f1"); the runtime reports eval_<key>."""
        ...

    def export(self, model: torch.nn.Module, cfg: "ResolvedRun", out_dir: Path) -> None:
        """Write final/ in Hugging Face format: merged weights, or the adapters (+ projector/head) for a frozen base."""
        ...

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the model; loaded back with load_state_dict(strict=False)."""
        ...


class RecipeBase:
    """Defaults a recipe may inherit: trainable-only state, HF save_pretrained export."""

    name = "base"

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return trainable_state(model)

    def export(self, model: torch.nn.Module, cfg: "ResolvedRun", out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(str(out_dir), safe_serialization=True)
        else:
            torch.save(trainable_state(model), out_dir / "model.pt")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All weights and buffers when everything trains; only trainable parameters when part is frozen."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return {k: v.detach() for k, v in model.state_dict().items()}
    return {k: p.detach() for k, p in params.items() if p.requires_grad}


def resolve_data_path(cfg: "ResolvedRun", data_dir: Path) -> Path:
    """spec.data.path: absolute as given, else relative to the data volume (data_dir)."""
    return on_data_volume((cfg.spec.get("data") or {}).get("path") or "", data_dir)


def on_data_volume(raw: str, data_dir: Path) -> Path:
    """A path from the spec (data.path, data.options.labels, ...): absolute as given, else relative to data_dir."""
    path = Path(raw)
    return path if path.is_absolute() else Path(data_dir) / path


def in_eval_split(key: str, fraction: float) -> bool:
    """Whether a record (by its id or sequence) is held out: its 64-bit blake2b hash falls in the first
    `fraction` of the hash space, so the split is the same every run and on every rank."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction
