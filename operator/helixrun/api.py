"""The TrainingRun API as Python sees it.

The CRD in crds/ is the one source of truth. This module reads its OpenAPI
schema and CEL rules and validates a run the way the API server does (defaults,
types, enums, minimums, `x-kubernetes-validations`), so `helixrun render`, the
operator and the trainer's local mode refuse what `kubectl apply` refuses, with
a message naming the field. Typed access comes from pydantic models generated
from that same schema: there is no second copy of the API to drift.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal, Optional

import celpy
import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

GROUP = "helixrun.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingRun"
PLURAL = "trainingruns"
CRD_FILE = "helixrun.io_trainingruns.yaml"


class InvalidRun(ValueError):
    """A run refused by the schema, a CEL rule or a cluster fact (pool, capacity)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = ""):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(f"{path}: {msg}" for path, msg in problems))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


@functools.cache
def crd() -> dict:
    return yaml.safe_load((files("helixrun") / "crds" / CRD_FILE).read_text())


@functools.cache
def schema() -> dict:
    (version,) = [v for v in crd()["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


def spec_schema() -> dict:
    return schema()["properties"]["spec"]


# -- defaulting -------------------------------------------------------------


def apply_defaults(node_schema: dict, value: Any) -> Any:
    """Fill `default`s the way the API server does: only inside objects that exist."""
    if isinstance(value, dict) and "properties" in node_schema:
        for name, sub in node_schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in node_schema:
        return [apply_defaults(node_schema["items"], item) for item in value]
    return value


# -- validation -------------------------------------------------------------


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_errors(obj: dict) -> list[tuple[str, str]]:
    validator = jsonschema.Draft4Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = re.search(r"'([^']+)' is a required property", error.message)
            path.append(missing.group(1) if missing else "?")
            message = "Required value"
        elif error.validator == "additionalProperties":
            message = error.message
        else:
            message = error.message
        problems.append((_path(path), message))
    return problems


def _unknown_fields(node_schema: dict, value: Any, path: list) -> list[tuple[str, str]]:
    """Fields the schema does not declare: kubectl's strict field validation refuses them."""
    problems: list[tuple[str, str]] = []
    if isinstance(value, dict) and "properties" in node_schema:
        for name, item in value.items():
            if name not in node_schema["properties"]:
                if not (path == ["metadata"] or node_schema.get("x-kubernetes-preserve-unknown-fields")):
                    problems.append((_path([*path, name]), "unknown field"))
            else:
                problems += _unknown_fields(node_schema["properties"][name], item, [*path, name])
    elif isinstance(value, list) and "items" in node_schema:
        for i, item in enumerate(value):
            problems += _unknown_fields(node_schema["items"], item, [*path, i])
    return problems


@functools.cache
def _cel_program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(node_schema: dict, value: Any, path: list) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for rule in node_schema.get("x-kubernetes-validations", []):
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
        except Exception as exc:  # a rule that cannot evaluate counts as failed, as in the API server
            ok, rule = False, {**rule, "message": f"{rule.get('message', rule['rule'])} ({exc})"}
        if not ok:
            where = _path(path) + rule.get("fieldPath", "")
            problems.append((where, rule.get("message", f"failed rule: {rule['rule']}")))
    if isinstance(value, dict):
        for name, sub in node_schema.get("properties", {}).items():
            if name in value:
                problems += _cel_errors(sub, value[name], [*path, name])
    elif isinstance(value, list) and "items" in node_schema:
        for i, item in enumerate(value):
            problems += _cel_errors(node_schema["items"], item, [*path, i])
    return problems


def validate(obj: dict, source: str = "") -> dict:
    """Return a defaulted copy of a TrainingRun object, or raise InvalidRun naming every bad field."""
    if not isinstance(obj, dict):
        raise InvalidRun([("", "a TrainingRun must be a mapping")], source)
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise InvalidRun(
            [("apiVersion/kind", f"expected {API_VERSION} {KIND}, got {obj.get('apiVersion')} {obj.get('kind')}")],
            source,
        )
    obj = apply_defaults(schema(), copy.deepcopy(obj))
    problems = _schema_errors(obj) + _unknown_fields(schema(), obj, [])
    if not problems:  # CEL rules assume a well-typed object, as in the API server
        problems = _cel_errors(schema(), obj, [])
    if problems:
        raise InvalidRun(problems, source)
    return obj


# -- typed access -----------------------------------------------------------


# Acronyms that stay one word in attribute names (allowQLoRA -> allow_qlora).
_ACRONYMS = {"QLoRA": "Qlora"}


def _snake(name: str) -> str:
    for acronym, word in _ACRONYMS.items():
        name = name.replace(acronym, word)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _python_type(name: str, node: dict):
    if "enum" in node:
        return Literal[tuple(node["enum"])]
    kind = node.get("type")
    if kind == "object":
        if "properties" in node:
            return _model(name, node)
        return dict[str, Any]
    if kind == "array":
        return list[_python_type(name + "Item", node.get("items", {}))]
    return {"string": str, "integer": int, "number": float, "boolean": bool}.get(kind, Any)


def _model(name: str, node: dict) -> type[BaseModel]:
    fields = {}
    for prop, sub in node["properties"].items():
        fields[_snake(prop)] = (
            Optional[_python_type(name + prop[0].upper() + prop[1:], sub)],
            Field(default=sub.get("default"), alias=prop, description=sub.get("description")),
        )
    config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)
    return create_model(name, __config__=config, **fields)


RunSpec: type[BaseModel] = _model("RunSpec", spec_schema())


@dataclass(frozen=True)
class TrainingRun:
    """A validated run: identity from metadata, typed spec, and the raw (defaulted) spec dict."""

    name: str
    namespace: str
    spec: Any  # a RunSpec
    raw_spec: dict
    uid: str = ""
    labels: dict = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: dict, source: str = "") -> "TrainingRun":
        obj = validate(obj, source)
        meta = obj.get("metadata", {})
        if not meta.get("name"):
            raise InvalidRun([("metadata.name", "Required value")], source)
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            spec=RunSpec.model_validate(obj["spec"]),
            raw_spec=obj["spec"],
            uid=meta.get("uid", ""),
            labels=dict(meta.get("labels", {})),
        )


def documents(text: str, source: str = "") -> list[tuple[dict, str]]:
    """The documents of a YAML stream of TrainingRuns, each with where it is; errors name the file and line."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InvalidRun([("", f"not valid YAML: {getattr(exc, 'problem', exc)}")], where) from exc
    if not docs:
        raise InvalidRun([("", "no TrainingRun in the file")], source)
    return [(doc, f"{source} (document {i + 1})" if len(docs) > 1 else source) for i, doc in enumerate(docs)]


def load_runs(text: str, source: str = "") -> list[TrainingRun]:
    """Parse a YAML stream of TrainingRuns; errors name the file and the document."""
    return [TrainingRun.from_object(doc, where) for doc, where in documents(text, source)]
