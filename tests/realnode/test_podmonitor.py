"""The PodMonitor translation (podmonitor.py) against the Prometheus the tests run: its configuration
loads (Debian's build has no Kubernetes discovery; a `kubernetes_sd_configs` entry is refused), and
role-`pod` targets are labelled as Kubernetes discovery labels them."""

from __future__ import annotations

import subprocess

import yaml

from tests.chart.helm import template
from tests.debian import require
from tests.realnode.podmonitor import pod_targets, scrape_configs

POD = {
    "metadata": {"name": "esm2-master-0", "namespace": "bio",
                 "labels": {"helixrun.io/run": "esm2", "training.kubeflow.org/replica-type": "master"}},
    "spec": {"containers": [{"name": "pytorch", "ports": [{"name": "metrics", "containerPort": 9400},
                                                          {"containerPort": 23456}]}]},
    "status": {"podIP": "10.200.1.7", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_the_charts_pod_monitor_becomes_a_configuration_prometheus_loads(tmp_path):
    values = {"monitoring": {"podMonitor": {"enabled": True}}}
    (pod_monitor,) = [o for o in template(values, namespace="helixrun-system") if o["kind"] == "PodMonitor"]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": scrape_configs(pod_monitor, tmp_path / "pods.json")}))
    checked = subprocess.run([require("promtool"), "check", "config", "--syntax-only", str(config)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_container_port_of_a_pod_with_an_ip_is_a_target_labelled_as_discovery_does():
    unscheduled = {**POD, "metadata": {**POD["metadata"], "name": "pending"}, "status": {"phase": "Pending"}}
    targets = pod_targets([POD, unscheduled])
    assert [t["targets"] for t in targets] == [["10.200.1.7:9400"], ["10.200.1.7:23456"]]
    labels = targets[0]["labels"]
    assert labels["__meta_kubernetes_pod_label_helixrun_io_run"] == "esm2"
    assert labels["__meta_kubernetes_pod_labelpresent_training_kubeflow_org_replica_type"] == "true"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "metrics"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert targets[1]["labels"]["__meta_kubernetes_pod_container_port_name"] == ""
