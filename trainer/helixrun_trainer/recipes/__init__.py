"""Recipe registry, keyed by the CRD's recipe enum; modules are imported lazily,
so a broken or missing recipe fails only when a run uses it."""

from __future__ import annotations

import importlib

from helixrun_trainer.recipes.base import LossOutput, Recipe, RecipeBase, RecipeData

# recipe name (spec.recipe) -> module under helixrun_trainer.recipes; the module defines RECIPE (an instance).
MODULES: dict[str, str] = {
    "esm2-mlm": "esm2_mlm",
    "genechat": "genechat",
    "metagene-classification": "metagene_classification",
    "structdiff": "structdiff",
    "ptm-mamba": "ptm_mamba",
}


class UnknownRecipe(ValueError):
    pass


def get_recipe(name: str) -> Recipe:
    if name not in MODULES:
        raise UnknownRecipe(f"unknown recipe {name!r} (known: {', '.join(sorted(MODULES))})")
    module = importlib.import_module(f"helixrun_trainer.recipes.{MODULES[name]}")
    return module.RECIPE


__all__ = ["LossOutput", "MODULES", "Recipe", "RecipeBase", "RecipeData", "UnknownRecipe", "get_recipe"]
