"""The few Kubernetes API calls the operator makes, through the official client."""

from __future__ import annotations

import functools

from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from helixrun import api
from helixrun.kube_login import login  # noqa: F401  (handlers call kube.login at startup)


@functools.cache
def _dynamic() -> dynamic.DynamicClient:
    return dynamic.DynamicClient(client.ApiClient())


def serves(backend) -> bool:
    """Whether the cluster serves the backend's job kind (its CRD is installed), by API discovery."""
    try:
        _dynamic().resources.get(api_version=f"{backend.group}/{backend.version}", kind=backend.kind)
    except dynamic.exceptions.ResourceNotFoundError:
        return False
    return True


def create_if_absent(obj: dict) -> bool:
    """Create obj; False when it already exists (HTTP 409), so retries never duplicate."""
    resource = _dynamic().resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    try:
        resource.create(body=obj, namespace=obj["metadata"].get("namespace"))
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def remove_finalizer(obj: dict, finalizer: str) -> None:
    """Remove one finalizer from the object, under its resourceVersion (others' finalizers stay); gone is done."""
    resource = _dynamic().resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    meta = obj["metadata"]
    for _ in range(5):
        try:
            current = resource.get(name=meta["name"], namespace=meta["namespace"]).to_dict()
            finalizers = current["metadata"].get("finalizers") or []
            if finalizer not in finalizers:
                return
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"],
                                  "finalizers": [f for f in finalizers if f != finalizer]}}
            resource.patch(body=patch, name=meta["name"], namespace=meta["namespace"],
                           content_type="application/merge-patch+json")
            return
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status != 409:
                raise
    raise RuntimeError(f"{obj['kind']} {meta['namespace']}/{meta['name']} kept changing; finalizer {finalizer} left")


def get_run(namespace: str, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi().get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def update_run_status(namespace: str, name: str, compute, attempts: int = 5) -> dict | None:
    """Read the run, compute a status update from it, and patch it only if nobody wrote in between.

    Several handlers explain the same run (job phase, pod exits, scheduling); the resourceVersion
    precondition turns their read-modify-write races into retries. Returns the run as read, or None
    when it is gone or there was nothing to change.
    """
    objects = client.CustomObjectsApi()
    for _ in range(attempts):
        run = get_run(namespace, name)
        if run is None:
            return None
        update = compute(run)
        if not update:
            return None
        body = {"metadata": {"resourceVersion": run["metadata"]["resourceVersion"]}, "status": update}
        try:
            objects.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, name, body)
        except ApiException as exc:
            if exc.status == 409:
                continue
            if exc.status == 404:
                return None
            raise
        return run
    raise RuntimeError(f"status of {namespace}/{name} kept changing under {attempts} attempts")


def patch_job(backend, namespace: str, name: str, patch: dict) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object(
        backend.group, backend.version, namespace, backend.plural, name, patch
    )


def get_job(backend, namespace: str, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi().get_namespaced_custom_object(
            backend.group, backend.version, namespace, backend.plural, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete_job(backend, namespace: str, name: str) -> None:
    try:
        client.CustomObjectsApi().delete_namespaced_custom_object(
            backend.group, backend.version, namespace, backend.plural, name, propagation_policy="Background"
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_pod(namespace: str, name: str, uid: str) -> None:
    """Delete that very pod: a recreated one of the same name (409 on the precondition) is left alone."""
    try:
        client.CoreV1Api().delete_namespaced_pod(
            name, namespace, body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        )
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
