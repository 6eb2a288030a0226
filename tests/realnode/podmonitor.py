"""A PodMonitor turned into Prometheus scrape configs, as the Prometheus Operator generates them.

The test cluster runs no Prometheus Operator, so this does its job for the fields the chart's
PodMonitor uses (namespaceSelector, a label selector of Exists/In expressions or matchLabels,
podTargetLabels, podMetricsEndpoints with port, path, interval, scrapeTimeout, honorLabels and
relabelings), following prometheus-operator's pkg/prometheus/promcfg.go: role `pod` service
discovery, keep the selected pods and the named container port, then the target labels
(namespace, container, pod, job) and the user's relabelings.

Debian builds its prometheus without Kubernetes service discovery, so `PodDiscovery` plays role
`pod` discovery: it writes the pods' targets with the same `__meta_kubernetes_*` labels to a file
that Prometheus reads through `file_sd_configs`. Every relabeling, the selection included, still
runs in Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path


def _label(name: str) -> str:
    """Kubernetes label name -> Prometheus label name, as service discovery sanitizes it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selector_relabelings(selector: dict) -> list[dict]:
    rules = [{"action": "keep", "source_labels": [f"__meta_kubernetes_pod_label_{_label(k)}",
                                                  f"__meta_kubernetes_pod_labelpresent_{_label(k)}"],
              "regex": f"({re.escape(v)});true"} for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op = _label(expr["key"]), expr["operator"]
        if op == "Exists":
            rules.append({"action": "keep", "source_labels": [f"__meta_kubernetes_pod_labelpresent_{key}"],
                          "regex": "true"})
        elif op == "In":
            rules.append({"action": "keep", "source_labels": [f"__meta_kubernetes_pod_label_{key}",
                                                              f"__meta_kubernetes_pod_labelpresent_{key}"],
                          "regex": f"({'|'.join(map(re.escape, expr['values']))});true"})
        else:
            raise ValueError(f"selector operator {op} is not translated here")
    return rules


def _relabeling(rule: dict) -> dict:
    """A monitoring.coreos.com RelabelConfig (camelCase) as Prometheus configuration (snake_case)."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(k, k): v for k, v in rule.items()}


def pod_targets(pods: list[dict]) -> list[dict]:
    """Role `pod` discovery's targets: one per container port of each pod that has an IP."""
    targets = []
    for pod in pods:
        meta, ip = pod["metadata"], pod.get("status", {}).get("podIP")
        if not ip:
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        labels = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
                  "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_phase": pod["status"].get("phase", ""),
                  "__meta_kubernetes_pod_ready": str(ready).lower()}
        for key, value in (meta.get("labels") or {}).items():
            labels[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
            labels[f"__meta_kubernetes_pod_labelpresent_{_label(key)}"] = "true"
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                targets.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": {
                    **labels, "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}})
    return targets


class PodDiscovery:
    """Keeps `path` holding the targets of the pods the PodMonitor's namespaceSelector picks, refreshed
    every `every` seconds."""

    def __init__(self, cluster, pod_monitor: dict, path: Path, every: float = 1.0):
        namespaces = pod_monitor["spec"].get("namespaceSelector") or {}
        # kubectl's namespace arguments, one listing each
        self.listings = ([["--all-namespaces"]] if namespaces.get("any") else
                         [["-n", ns] for ns in namespaces.get("matchNames") or [pod_monitor["metadata"]["namespace"]]])
        self.cluster, self.path, self.every = cluster, path, every
        self._stop = threading.Event()
        self._refresh()
        self._thread = threading.Thread(target=self._loop, name="pod-discovery", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        pods = [p for where in self.listings for p in self.cluster.get_json("pods", *where)["items"]]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pod_targets(pods)))
        os.replace(tmp, self.path)  # Prometheus never reads half a file

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def scrape_configs(pod_monitor: dict, targets_file: Path) -> list[dict]:
    meta, spec = pod_monitor["metadata"], pod_monitor["spec"]
    sd = {"files": [str(targets_file)], "refresh_interval": "1s"}
    configs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        relabel = [
            *_selector_relabelings(spec["selector"]),
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": re.escape(endpoint["port"])},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            *({"source_labels": [f"__meta_kubernetes_pod_label_{_label(k)}"], "target_label": _label(k),
               "regex": "(.+)", "replacement": "${1}"} for k in spec.get("podTargetLabels") or []),
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
            *(_relabeling(r) for r in endpoint.get("relabelings") or []),
        ]
        config = {
            "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "honor_labels": bool(endpoint.get("honorLabels")),
            "file_sd_configs": [sd],
            "metrics_path": endpoint.get("path", "/metrics"),
            "relabel_configs": relabel,
        }
        if endpoint.get("interval"):
            config["scrape_interval"] = endpoint["interval"]
        if endpoint.get("scrapeTimeout"):
            config["scrape_timeout"] = endpoint["scrapeTimeout"]
        configs.append(config)
    return configs
