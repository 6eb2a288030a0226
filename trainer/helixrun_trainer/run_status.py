"""Report progress into the TrainingRun's status, so `kubectl get tr` shows step and loss.

Rank 0 patches `status.progress` and `status.lastCheckpoint` of its own run
through the API server with the pod's ServiceAccount token (the chart grants
trainers `trainingruns/status` get/patch and nothing else). Plain HTTPS with
the standard library: the trainer needs no Kubernetes client. Reports are
throttled and sent from a background thread, so a slow or absent API server
never stalls a training step; outside a cluster the reporter does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from helixrun import api

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MIN_INTERVAL_SECONDS = 15.0


@dataclass(frozen=True)
class ApiEndpoint:
    server: str
    token: str
    ca_file: str | None

    @classmethod
    def in_cluster(cls) -> "ApiEndpoint | None":
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        token = SERVICE_ACCOUNT / "token"
        if not (host and port and token.exists()):
            return None
        return cls(f"https://{host}:{port}", token.read_text().strip(), str(SERVICE_ACCOUNT / "ca.crt"))


def progress_status(step: int, total: int, loss: float | None, tokens_per_second: float | None, now: str) -> dict:
    progress = {"step": step, "totalSteps": total, "stepOfTotal": f"{step}/{total}", "updatedAt": now}
    if loss is not None:
        progress["loss"] = f"{loss:.4g}"
    if tokens_per_second is not None:
        progress["tokensPerSecond"] = round(tokens_per_second, 1)
    return {"progress": progress}


def checkpoint_status(step: int, path: str, now: str) -> dict:
    return {"lastCheckpoint": {"step": step, "path": path, "time": now}}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunStatusReporter:
    """Throttled, non-blocking status patches for one run; `close()` flushes the last one."""

    def __init__(self, endpoint: ApiEndpoint | None, namespace: str, name: str,
                 min_interval: float = MIN_INTERVAL_SECONDS):
        self.endpoint, self.min_interval = endpoint, min_interval
        self.url = (
            f"{endpoint.server}/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
            if endpoint else ""
        )
        self._last_progress = 0.0
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._thread = threading.Thread(target=self._send_loop, name="run-status", daemon=True)
        if endpoint:
            self._context = ssl.create_default_context(cafile=endpoint.ca_file)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    def progress(self, step: int, total: int, loss: float | None, tokens_per_second: float | None,
                 force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < self.min_interval:
            return
        self._last_progress = now
        self._queue.put(progress_status(step, total, loss, tokens_per_second, _now()))

    def checkpoint(self, step: int, path: str) -> None:
        if self.enabled:
            self._queue.put(checkpoint_status(step, path, _now()))

    def close(self, timeout: float = 10.0) -> None:
        if self.enabled and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _send_loop(self) -> None:
        while (status := self._queue.get()) is not None:
            self._patch(status)

    def _patch(self, status: dict) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"status": status}).encode(),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json", "Authorization": f"Bearer {self.endpoint.token}"},
        )
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=10):
                pass
        except (urllib.error.URLError, OSError) as exc:  # progress is advisory: never fail training over it
            log.warning("could not report progress to the TrainingRun: %s", exc)
