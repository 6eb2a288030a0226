"""values.schema.json, the README's values table and the default pools are generated from one source (generate.py)."""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.chart import generate
from tests.chart.helm import REPO

REGENERATE = "run `python -m tests.chart.generate` and commit the result"


@pytest.mark.parametrize("path", sorted(generate.generated_files()), ids=lambda p: str(p.relative_to(REPO)))
def test_committed_file_is_the_generated_one(path):
    assert path.read_text() == generate.generated_files()[path], f"{path.relative_to(REPO)} drifted: {REGENERATE}"


def test_a_hand_edited_schema_is_drift():
    values = generate.VALUES.read_text()
    edited = generate.SCHEMA.read_text().replace('"minimum": 1', '"minimum": 2', 1)
    assert edited != generate.schema_text(values)


def test_pools_yaml_is_the_one_source_of_the_default_pools():
    values = generate.VALUES.read_text()
    pools = generate.POOLS.read_text().replace("name: h100\n", "name: h100-sxm\n")
    regenerated = generate.values_with_pools(values, pools)
    assert "  - name: h100-sxm\n" in regenerated and "  - name: h100\n" not in regenerated
    assert generate.values_with_pools(regenerated, generate.POOLS.read_text()) == values, "regenerating is not stable"


def schema_of(values_yaml: str) -> dict:
    return generate.schema(textwrap.dedent(values_yaml))


def test_types_come_from_defaults_and_objects_refuse_unknown_keys():
    generated = schema_of("""
        # -- How many.
        count: 1
        ratio: 0.5
        name: ""
        enabled: true
        nested:
          deeper: 2
    """)
    properties = generated["properties"]
    assert properties["count"] == {"type": "integer", "description": "How many."}
    assert [properties[k]["type"] for k in ("ratio", "name", "enabled")] == ["number", "string", "boolean"]
    assert properties["nested"]["additionalProperties"] is False
    assert generated["additionalProperties"] is False


def test_schema_tags_add_keywords_and_a_map_replaces_the_defaults_keys():
    generated = schema_of("""
        # -- Pods.
        # +schema: {minimum: 1}
        replicas: 1
        # +schema:
        #   additionalProperties: {type: string}
        labels:
          team: ml
        # +schema: {items: {type: string}}
        args: []
    """)["properties"]
    assert generated["replicas"] == {"type": "integer", "description": "Pods.", "minimum": 1}
    assert generated["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert generated["args"]["items"] == {"type": "string"}


def test_docs_property_declares_an_optional_key_typed_by_its_example():
    generated = schema_of("""
        context:
          # -- Set by the kubelet.
          fixed: 1
          # -- When to change ownership.
          # +schema: {enum: [OnRootMismatch, Always]}
          # +docs:property
          # policy: OnRootMismatch
    """)["properties"]["context"]["properties"]
    assert generated["policy"] == {"type": "string", "description": "When to change ownership.",
                                   "enum": ["OnRootMismatch", "Always"]}
    assert generated["fixed"]["description"] == "Set by the kubelet."


@pytest.mark.parametrize(
    "values_yaml, message",
    [
        ("args: []\n", "values.yaml:1: args: say what the list holds"),
        ("# +schema: {minimum: [1\nreplicas: 1\n", "values.yaml:2: `+schema:` is not YAML"),
        ("# +schema: [1]\nreplicas: 1\n", "values.yaml:2: `+schema:` must be a mapping"),
        ("# +schemas: {minimum: 1}\nreplicas: 1\n", "values.yaml:2: unknown tag '+schemas: {minimum: 1}'"),
    ],
)
def test_notation_errors_name_the_line(values_yaml, message):
    with pytest.raises(generate.ValuesSourceError, match=re.escape(message)):
        generate.schema(values_yaml)


def test_pool_quantities_accept_what_the_operator_accepts():
    from helixrun import quantity

    definitions = generate.schema(generate.VALUES.read_text())["definitions"]
    assert definitions["hostQuantity"]["pattern"] == quantity.PATTERN, "values.yaml's hostQuantity drifted from the operator's"
