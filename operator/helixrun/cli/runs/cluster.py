"""Read TrainingRuns from the cluster with the Kubernetes client."""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from helixrun import api
from helixrun.kube_login import login


def trainingruns(name: str | None, namespace: str | None, all_namespaces: bool) -> list[dict]:
    """The named run, or every run of the namespace (of the cluster with `all_namespaces`), as plain objects."""
    try:
        login()
    except config.ConfigException as exc:
        raise SystemExit(f"helixrun: no cluster to ask ({exc}); give a local run folder or set KUBECONFIG") from None
    objects = client.CustomObjectsApi()
    namespace = namespace or "default"
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
