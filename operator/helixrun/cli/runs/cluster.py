"""Read TrainingRuns from the cluster with the Kubernetes client."""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from helixrun import api
from helixrun.kube_login import login


def connect(context: str | None) -> str:
    """Log in at the kubeconfig's `context` (default: its current one); the namespace it works in by default."""
    try:
        return login(context)
    except config.ConfigException as exc:
        which = f"context {context!r}" if context else "cluster"
        raise SystemExit(f"helixrun: no {which} to ask ({exc}); give a local run folder or set KUBECONFIG") from None


def trainingruns(name: str | None, namespace: str | None, all_namespaces: bool, context: str | None = None) -> list[dict]:
    """The named run, or every run of the namespace (of the cluster with `all_namespaces`), as plain objects.

    `namespace` None: the context's namespace, as kubectl takes it."""
    default = connect(context)
    namespace = namespace or default
    objects = client.CustomObjectsApi()
    if name:
        try:
            return [objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)]
        except ApiException as exc:
            if exc.status == 404:
                raise SystemExit(f"helixrun: TrainingRun {namespace}/{name} not found "
                                 "(a local run folder? it does not exist)") from None
            raise
    if all_namespaces:
        return objects.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    return objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
