"""LoRA and QLoRA as the plan asks: one place for how a frozen base gets its adapters.

The plan's method (lora, qlora; the planner may turn a lora run into qlora when
allowQLoRA lets it) decides how the base is loaded; spec.model.lora gives r,
alpha, dropout and target modules. Adapters stay fp32 (PEFT's
autocast_adapter_dtype) whatever the base's dtype.
"""

from __future__ import annotations

from typing import Any

import torch


def lora_settings(cfg, defaults: dict | None = None) -> dict:
    lora = dict(defaults or {})
    lora.update((cfg.spec.get("model") or {}).get("lora") or {})
    return {"r": int(lora.get("r", 8)), "alpha": float(lora.get("alpha", 16)),
            "dropout": float(lora.get("dropout", 0.05)),
            "targets": list(lora.get("targetModules") or ["q_proj", "v_proj"])}


def method_of(cfg) -> str:
    """The plan's method (it has the last word), else the spec's."""
    plan = getattr(cfg, "plan", None)
    return getattr(plan, "method", None) or (cfg.spec.get("model") or {}).get("method") or "full"


def quantization_config():
    """4-bit NF4 with double quantization and bf16 compute (QLoRA paper settings); needs CUDA + bitsandbytes."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def base_load_kwargs(cfg, method: str) -> dict[str, Any]:
    """from_pretrained keyword arguments for a frozen base: bf16 on purpose (never the checkpoint's fp32)."""
    model = cfg.spec.get("model") or {}
    kwargs: dict[str, Any] = {"revision": model.get("revision"), "cache_dir": cfg.paths.model_cache,
                              "dtype": torch.bfloat16}
    if method == "qlora":
        if not torch.cuda.is_available():
            raise RuntimeError("QLoRA (4-bit bitsandbytes) needs a CUDA GPU")
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def add_lora(model: torch.nn.Module, cfg, *, defaults: dict | None = None, method: str | None = None,
             modules_to_save: list[str] | None = None):
    """Wrap `model` with LoRA adapters (after k-bit preparation for QLoRA); the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    method = method or method_of(cfg)
    settings = lora_settings(cfg, defaults)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=settings["targets"], bias="none", modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
