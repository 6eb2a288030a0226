"""How a trainer pod is scraped: one metrics port per local rank (docs/METRICS.md).

The trainer listens on spec.metrics.port + LOCAL_RANK; the pod declares those
ports with these names, and the chart's PodMonitor scrapes each name. The
render code calls these so the names live in one place.
"""

from __future__ import annotations

PORT_NAME = "metrics"
METRICS_PATH = "/metrics"


def port_name(local_rank: int) -> str:
    """`metrics` for local rank 0, `metrics-<i>` after it (container port names: 15 characters at most)."""
    return PORT_NAME if local_rank == 0 else f"{PORT_NAME}-{local_rank}"


def container_ports(port: int, local_ranks: int) -> list[dict]:
    """The container ports of a trainer pod running `local_ranks` processes (one per GPU)."""
    return [{"name": port_name(i), "containerPort": port + i, "protocol": "TCP"} for i in range(max(local_ranks, 1))]


def scrape_annotations(port: int) -> dict[str, str]:
    """The `prometheus.io/*` fallback; that convention names one port, so it reaches local rank 0 only."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": METRICS_PATH}
