"""Read a run's series from Prometheus over its HTTP API (queries.py says what to ask)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from helixrun import metrics_contract as contract
from helixrun.cli.runs import queries
from helixrun.cli.runs.views import number

Series = dict[float, float]  # unix time -> value


def query(url: str, promql: str, params: dict | None = None, path: str = "query", timeout: float = 10.0) -> list:
    """The `result` of /api/v1/<path>; RuntimeError naming the query when Prometheus refuses it."""
    args = urllib.parse.urlencode({"query": promql, **(params or {})})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/{path}?{args}", timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
    return body["data"]["result"]


def live_values(url: str, name: str, namespace: str) -> dict[str, float]:
    """The run's latest values that Prometheus has, keyed by RunView field."""
    values = {}
    for field, promql in queries.live(name, namespace).items():
        result = query(url, promql)
        if result:
            values[field] = number(result[0]["value"][1])
    return values


def curve_series(url: str, name: str, namespace: str, since_seconds: float, points: int = 500) -> dict:
    """The last `since_seconds` of the run's curves, sampled at the same instants: the keyword arguments of
    views.curves_from_series."""
    end = time.time()
    resolution = max(since_seconds / points, 1.0)
    window = {"start": f"{end - since_seconds:.3f}", "end": f"{end:.3f}", "step": f"{resolution:.3f}"}

    def series(result: dict) -> Series:
        return {float(t): number(v) for t, v in result["values"]}

    found = {}
    for field, promql in queries.curves(name, namespace).items():
        result = query(url, promql, window, path="query_range")
        found[field] = series(result[0]) if result else {}
    evaluations = query(url, queries.evaluations(name, namespace), window, path="query_range")
    found["evals"] = {item["metric"].get(contract.EVAL_METRIC_LABEL, ""): series(item) for item in evaluations}
    return found
