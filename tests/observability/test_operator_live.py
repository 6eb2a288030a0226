"""`helixrun operator` (kopf's runner, the lead's handlers) serves OPERATOR_METRICS against the test cluster.
"""

from __future__ import annotations

import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helixrun.telemetry import operator_metrics as om

from .harness import REPO, free_port, poll

pytestmark = pytest.mark.cluster


def test_the_running_operator_exports_runs_and_reconciles(cluster, tmp_path, monkeypatch):
    from tests.integration.conftest import Operator

    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "helixrun.io_trainingruns.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingruns.helixrun.io", "--timeout=60s")
    cluster.kubectl("create", "namespace", "obs-operator", check=False)
    cluster.kubectl("create", "serviceaccount", "helixrun-trainer", "-n", "obs-operator", check=False)
    port = free_port()
    monkeypatch.setenv(om.PORT_ENV, str(port))
    operator = Operator(cluster, tmp_path / "operator.log").start()
    try:
        run = yaml.safe_load((REPO / "examples" / "run-esm2.yaml").read_text())
        run["metadata"]["namespace"] = "obs-operator"
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(run))

        def exported() -> dict:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            out: dict = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    out.setdefault(s.name, []).append((s.labels, s.value))
            runs = sum(v for labels, v in out.get("helixrun_operator_runs", []) if labels.get("pool") == "a800")
            reconciles = sum(v for _, v in out.get("helixrun_operator_reconcile_duration_seconds_count", []))
            return out if runs >= 1 and reconciles >= 1 else {}

        samples = poll("the operator's metrics for the new run", exported, timeout=90,
                       on_timeout=lambda: (tmp_path / "operator.log").read_text()[-3000:])
        assert "helixrun_operator_gpus_requested" in samples
    finally:
        operator.stop()
