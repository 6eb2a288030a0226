"""How helixrun's processes reach the Kubernetes API: the operator and the CLI log in the same way."""

from __future__ import annotations

from kubernetes import config


def login() -> None:
    """Configure the kubernetes client: the pod's ServiceAccount inside a pod, else the kubeconfig (KUBECONFIG or
    ~/.kube/config). kopf logs in in this order too, so the operator's client and kopf act as one identity.
    Raises kubernetes.config.ConfigException when neither exists."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
