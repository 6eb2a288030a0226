"""Kubernetes and HTTP I/O stay in a few named edge modules of `helixrun`; the logic never reaches them.

Read from the source (every import statement, at any depth of a file, so lazy imports count too):
a module that imports a network library must be one of EDGES, and no other module may import an
edge, directly or through other helixrun modules, except the GLUE that wires reads to views.
"""

from __future__ import annotations

import ast
from pathlib import Path

import helixrun

PACKAGE = Path(helixrun.__file__).parent
# Libraries that talk to the API server or over HTTP. kubernetes.utils.quantity (a parser) is not one.
NETWORK = ("kubernetes.client", "kubernetes.config", "kubernetes.dynamic", "kubernetes.watch", "kopf", "aiohttp",
           "urllib.request", "http.client", "http.server", "requests", "httpx", "socket", "prometheus_client")
EDGES = {
    "helixrun.kube_login": "logs the Kubernetes client in",
    "helixrun.controller.kube": "the operator's API calls",
    "helixrun.controller.handlers": "kopf handlers: glue over resolve, render and status",
    "helixrun.cli.operator": "runs kopf",
    "helixrun.cli.runs.cluster": "reads TrainingRuns for helixrun status/watch",
    "helixrun.cli.runs.prometheus": "reads a run's series for helixrun status/plot",
    "helixrun.telemetry.operator_metrics": "the operator's collectors and the server that exposes them",
}
GLUE = {"helixrun.cli.runs.commands": "puts the CLI's readers, views and drawing together"}


def module_name(path: Path) -> str:
    parts = ("helixrun", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every dotted name an import statement of the file brings in (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = {module_name(path): imported(path) for path in sorted(PACKAGE.rglob("*.py"))}


def is_network(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in NETWORK)


def reached(module: str) -> set[str]:
    """helixrun modules that importing `module` may run, itself included (a.b.c runs a and a.b first)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for dotted in MODULES[name]:
            parts = dotted.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return seen


def test_the_reader_sees_the_package():
    assert {"helixrun.planner.planner", "helixrun.cli.runs.views", "helixrun.controller.kube"} <= set(MODULES)
    assert is_network("kubernetes.client.exceptions") and not is_network("kubernetes.utils.quantity")


def test_only_the_edges_import_network_libraries():
    doing_io = {name for name, names in MODULES.items() if any(is_network(n) for n in names)}
    assert doing_io - set(EDGES) == set(), "network I/O outside the edge modules: move it to one, or name it in EDGES"
    assert set(EDGES) - doing_io == set(), "an edge without I/O: drop it from EDGES"


def test_logic_never_reaches_an_edge():
    for name in sorted(set(MODULES) - set(EDGES) - set(GLUE)):
        assert not reached(name) & set(EDGES), f"{name} reaches {sorted(reached(name) & set(EDGES))}"

