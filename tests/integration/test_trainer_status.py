"""The trainer reports progress into its run's status with only the permissions the operator gives it."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest
import yaml

from helixrun.render import RenderSettings, trainer_account
from helixrun_trainer.run_status import ApiEndpoint, RunStatusReporter
from tests.integration.conftest import EXAMPLES, apply, run_object, run_status

pytestmark = pytest.mark.cluster


def trainer_endpoint(cluster, namespace: str, tmp_path) -> ApiEndpoint:
    """A token for the trainer ServiceAccount, bound exactly as the operator (and the chart) binds it."""
    cluster.apply(trainer_account(namespace, RenderSettings()))
    token = cluster.kubectl("create", "token", "helixrun-trainer", "-n", namespace).stdout.strip()
    kubeconfig = yaml.safe_load(open(cluster.kubeconfig))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]))
    return ApiEndpoint(cluster.server, token, str(ca))


def test_progress_and_last_checkpoint_show_in_kubectl_get_tr(crd_installed, namespace, tmp_path):
    cluster = crd_installed
    obj = run_object(EXAMPLES / "run-esm2.yaml", suspend=True)
    apply(cluster, obj, namespace)
    name = obj["metadata"]["name"]
    reporter = RunStatusReporter(trainer_endpoint(cluster, namespace, tmp_path), namespace, name, min_interval=3600)
    reporter.progress(120, 500000, 2.3456, 81234.5, force=True)
    reporter.progress(121, 500000, 2.1, 81000.0)  # throttled: within the interval
    reporter.checkpoint(100, "/checkpoints/step-00000100")
    reporter.close()
    status = run_status(cluster, name, namespace)
    assert status["progress"]["stepOfTotal"] == "120/500000" and status["progress"]["loss"] == "2.346"
    assert status["lastCheckpoint"]["step"] == 100
    row = cluster.kubectl("get", "tr", name, "-n", namespace, "--no-headers").stdout.split()
    assert "120/500000" in row and "2.346" in row


def test_the_trainer_token_cannot_change_the_spec(crd_installed, namespace, tmp_path):
    cluster = crd_installed
    obj = run_object(EXAMPLES / "run-esm2.yaml", suspend=True)
    apply(cluster, obj, namespace)
    endpoint = trainer_endpoint(cluster, namespace, tmp_path)
    url = f"{endpoint.server}/apis/helixrun.io/v1alpha1/namespaces/{namespace}/trainingruns/{obj['metadata']['name']}"
    request = urllib.request.Request(url, data=json.dumps({"spec": {"suspend": False}}).encode(), method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json",
                                              "Authorization": f"Bearer {endpoint.token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=endpoint.ca_file), timeout=10)
    assert refused.value.code == 403


def test_outside_a_cluster_the_reporter_does_nothing(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    reporter = RunStatusReporter(ApiEndpoint.in_cluster(), "ns", "run")
    assert not reporter.enabled
    reporter.progress(1, 2, 0.5, None, force=True)
    reporter.close()
