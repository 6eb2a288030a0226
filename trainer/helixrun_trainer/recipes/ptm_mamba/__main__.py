"""python -m helixrun_trainer.recipes.ptm_mamba precompute ...: stage 1 on its own.

Embeds train/val/test with the run's ESM-2 into HDF5 (embeddings.py): per rank
when started under torchrun (RANK/WORLD_SIZE), resumable, a no-op when
complete. Training then reads them only if the run sets
model.options.esmEmbeddings: precomputed, which leaks masked residues into the
MLM objective (see embeddings.py); the default on-the-fly path never needs this.

    python -m helixrun_trainer.recipes.ptm_mamba precompute --config /etc/helixrun/config.yaml
    python -m helixrun_trainer.recipes.ptm_mamba precompute --local -f run.yaml --workdir DIR [--tiny] [--set ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from helixrun_trainer.cli import add_train_arguments, local_config

    parser = argparse.ArgumentParser(prog="python -m helixrun_trainer.recipes.ptm_mamba")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("precompute", help="ESM-2 embeddings of every split into HDF5"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sets = list(args.set or []) + ["model.options.esmEmbeddings=precomputed"]
    if args.local:
        args.set = sets
        cfg = local_config(args)
    else:
        from helixrun.resolve import CONFIG_DIR, CONFIG_FILE, ResolvedRun

        cfg = ResolvedRun.from_yaml(Path(args.config or Path(CONFIG_DIR) / CONFIG_FILE).read_text())
        spec = dict(cfg.spec)
        model = dict(spec.get("model") or {})
        model["options"] = {**(model.get("options") or {}), "esmEmbeddings": "precomputed"}
        spec["model"] = model
        cfg = cfg.model_copy(update={"spec": spec})
    if cfg.spec.get("recipe") != "ptm-mamba":
        print(f"error: the run's recipe is {cfg.spec.get('recipe')!r}, not ptm-mamba", file=sys.stderr)
        return 2
    from helixrun_trainer.errors import DataError
    from helixrun_trainer.recipes.ptm_mamba import PTMMambaRecipe

    recipe = PTMMambaRecipe()
    recipe.build_model(cfg, args.tiny)
    try:
        recipe.build_data(cfg, args.tiny, Path(cfg.paths.data))  # precomputes whatever is missing
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("ESM embeddings complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
