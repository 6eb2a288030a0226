"""A PodMonitor turned into Prometheus scrape configs, as the Prometheus Operator generates them.

The test cluster runs no Prometheus Operator, so this does its job for the fields the chart's
PodMonitor uses (namespaceSelector, a label selector of Exists/In expressions or matchLabels,
podTargetLabels, podMetricsEndpoints with port, path, interval, scrapeTimeout, honorLabels and
relabelings), following prometheus-operator's pkg/prometheus/promcfg.go: role `pod` service
discovery, keep the selected pods and the named container port, then the target labels
(namespace, container, pod, job) and the user's relabelings.
"""

from __future__ import annotations

import re


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


def scrape_configs(pod_monitor: dict, kubeconfig: str) -> list[dict]:
    meta, spec = pod_monitor["metadata"], pod_monitor["spec"]
    sd: dict = {"role": "pod", "kubeconfig_file": kubeconfig}
    namespaces = spec.get("namespaceSelector") or {}
    if not namespaces.get("any"):
        sd["namespaces"] = {"names": namespaces.get("matchNames") or [meta["namespace"]]}
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
            "kubernetes_sd_configs": [sd],
            "metrics_path": endpoint.get("path", "/metrics"),
            "relabel_configs": relabel,
        }
        if endpoint.get("interval"):
            config["scrape_interval"] = endpoint["interval"]
        if endpoint.get("scrapeTimeout"):
            config["scrape_timeout"] = endpoint["scrapeTimeout"]
        configs.append(config)
    return configs
