"""What an image's code imports, read from the source (AST), as the distributions that provide it.

An image must carry exactly these: tests/images compares them with what each
Dockerfile installs and with what is installed in the built image.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.images.dockerfile import normalize, parse

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"helixrun": REPO / "operator" / "helixrun", "helixrun_trainer": REPO / "trainer" / "helixrun_trainer"}

# Library features that import an optional package of their own at run time, so the
# package never appears in an import statement of ours: (kind, name) -> distribution.
#   ("module", m): we import module m;  ("name", n): we import or use the name n;
#   ("keyword", k): we pass keyword argument k=True.
FEATURES = {
    ("module", "torch.utils.tensorboard"): "tensorboard",  # SummaryWriter
    ("name", "BitsAndBytesConfig"): "bitsandbytes",  # transformers' 4-bit loading (QLoRA)
    ("keyword", "use_mambapy"): "mambapy",  # transformers' Mamba on CPU
}


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # absolute module names, at any depth of the file
    features: set[tuple[str, str]] = field(default_factory=set)  # keys of FEATURES the file uses


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package].parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_module(package: str, path: Path) -> Module:
    module = Module(module_name(package, path), path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            module.imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            module.imports.add(stem)
            # `from pkg import sub` may import the submodule pkg.sub
            module.imports.update(f"{stem}.{alias.name}" for alias in node.names)
            module.features.update(("name", alias.name) for alias in node.names)
        elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and node.value.value is True:
            module.features.add(("keyword", node.arg))
        elif isinstance(node, ast.Name):
            module.features.add(("name", node.id))
    module.features.update(("module", name) for name in module.imports)
    module.features &= set(FEATURES)
    return module


def read_package(package: str) -> dict[str, Module]:
    return {m.name: m for m in (read_module(package, p) for p in sorted(PACKAGES[package].rglob("*.py")))}


def all_modules() -> dict[str, Module]:
    return {name: module for package in PACKAGES for name, module in read_package(package).items()}


def closure(entries: set[str], modules: dict[str, Module]) -> set[str]:
    """The project's modules that `entries` reach through import statements, wherever they sit in a file."""
    seen: set[str] = set()
    todo = [e for e in entries if e in modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in modules[name].imports:
            # importing a.b.c runs a/__init__ and a.b/__init__ first
            parts = imported.split(".")
            todo += [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules]
    return seen


def third_party(names: set[str], modules: dict[str, Module]) -> dict[str, set[str]]:
    """{distribution: {module that needs it}} for the given project modules."""
    providers = importlib.metadata.packages_distributions()
    needs: dict[str, set[str]] = {}
    for name in names:
        module = modules[name]
        for imported in module.imports:
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__" or not top:
                continue
            if top not in providers:
                raise LookupError(f"{module.path}: `import {imported}`: no installed distribution provides {top!r}")
            for dist in providers[top]:
                needs.setdefault(normalize(dist), set()).add(name)
        for feature in module.features:
            needs.setdefault(normalize(FEATURES[feature]), set()).add(name)
    return needs


def image_modules(image: str, modules: dict[str, Module]) -> set[str]:
    """The project modules an image can run. The trainer image: all of helixrun_trainer (recipes are
    loaded by name) and what it imports of helixrun. The operator image: what its command reaches, the
    `helixrun` console script's module and the subcommand its CMD names (the CLI imports those by name)."""
    if image == "trainer":
        return closure({m for m in modules if m.split(".")[0] == "helixrun_trainer"}, modules)
    from helixrun.cli import SUBCOMMANDS

    final = parse(REPO / "dockerfiles" / "operator.Dockerfile").final
    (entrypoint,) = json.loads(final.all("ENTRYPOINT")[-1])
    (command,) = json.loads(final.all("CMD")[-1])
    scripts = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())["project"]["scripts"]
    return closure({scripts[entrypoint].partition(":")[0], SUBCOMMANDS[command]}, modules)


def image_needs(image: str) -> dict[str, set[str]]:
    """{distribution: {module that needs it}} for what `image` runs."""
    modules = all_modules()
    return third_party(image_modules(image, modules), modules)
