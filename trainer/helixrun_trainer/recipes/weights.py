"""Where a recipe's main model weights come from: spec.model.init.

pretrained loads the released weights model.name names; scratch builds the same
architecture from that checkpoint's config with fresh weights (pretraining), drawn
from the torch RNG the runtime seeded before build_model, so every rank starts
from the same values. model.name is a Hugging Face id or a folder: an absolute
folder, or one pre-seeded on the cache volume as <model_cache>/<org>/<name>
(air-gapped clusters), wins over the Hub.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def model_init(cfg) -> str:
    return (cfg.spec.get("model") or {}).get("init") or "pretrained"


def model_source(cfg, name: str) -> tuple[str, dict[str, Any]]:
    """(what to load from, hub keyword arguments): a folder with a config.json, else the hub id and its revision."""
    local = Path(cfg.paths.model_cache) / name  # an absolute name stays itself
    if (local / "config.json").is_file():
        return str(local), {}
    return name, {"revision": (cfg.spec.get("model") or {}).get("revision"), "cache_dir": cfg.paths.model_cache}


def load_main_model(model_class, cfg, name: str | None = None, **load_kwargs):
    """model_class (an Auto class or a concrete one) per model.init: from_pretrained(**load_kwargs), or
    the architecture from the checkpoint's config in fp32 with freshly initialised weights."""
    source, hub = model_source(cfg, name or cfg.spec["model"]["name"])
    if model_init(cfg) == "scratch":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, **hub)
        log.info("model.init scratch: %s's architecture with fresh weights", source)
        model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
        return model.to(torch.float32)
    return model_class.from_pretrained(source, **{**load_kwargs, **hub})
