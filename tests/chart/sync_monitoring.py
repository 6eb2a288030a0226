"""Copy the observability work's monitoring values into the chart's values.

    python -m tests.chart.sync_monitoring

charts/helixrun/values-monitoring.yaml and values-monitoring.schema.json are
owned by the observability work; values.yaml and values.schema.json carry the
same `monitoring` section (test_monitoring_values_match_the_observability_snippet
fails when they drift). This rewrites the section in both files.
"""

from __future__ import annotations

import json

from tests.chart.helm import CHART

MARKER = "# Monitoring: merged from values-monitoring.yaml"


def main() -> None:
    values_path = CHART / "values.yaml"
    values = values_path.read_text()
    snippet = (CHART / "values-monitoring.yaml").read_text()
    start = values.index("monitoring:\n", values.index(MARKER))
    values_path.write_text(values[:start] + snippet[snippet.index("monitoring:\n"):])

    schema_path = CHART / "values.schema.json"
    schema = json.loads(schema_path.read_text())
    fragment = json.loads((CHART / "values-monitoring.schema.json").read_text())
    schema["properties"]["monitoring"] = fragment["properties"]["monitoring"]
    schema_path.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
