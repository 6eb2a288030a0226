"""How helixrun's processes reach the Kubernetes API: the operator and the CLI log in the same way."""

from __future__ import annotations

from pathlib import Path

from kubernetes import config

# Where a pod's ServiceAccount token names the pod's own namespace.
POD_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def login(context: str | None = None) -> str:
    """Configure the kubernetes client and return the namespace it works in by default, as kubectl does.

    Inside a pod: its ServiceAccount and the pod's namespace; else the kubeconfig (KUBECONFIG or
    ~/.kube/config) at `context` (default: its current context) and that context's namespace, or
    `default`. A named context always means the kubeconfig. kopf logs in in this order too, so the
    operator's client and kopf act as one identity. Raises kubernetes.config.ConfigException when
    neither exists or the context is not in the kubeconfig.
    """
    if context is None:
        try:
            config.load_incluster_config()
            return POD_NAMESPACE.read_text().strip()
        except config.ConfigException:
            pass
    config.load_kube_config(context=context)
    contexts, current = config.list_kube_config_contexts()
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    return (chosen or {}).get("context", {}).get("namespace") or "default"
