"""The little PromQL reading the generators and tests need: which metrics an expression names."""

from __future__ import annotations

import re

from helixrun.metrics_contract import Metric

# Words that look like identifiers in PromQL but are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan", "atan2",
}
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by an expression (function names, keywords and label names excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and other strings
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range and subquery windows
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)", text):
        name = match.group(1)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exposition_names(metric: Metric) -> set[str]:
    """The series names a contract metric appears under in prometheus-client's exposition."""
    if metric.kind == "counter":
        return {metric.name + "_total"}
    if metric.kind == "histogram":
        return {metric.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {metric.name}
