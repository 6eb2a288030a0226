"""The operator's metrics server as a process of its own, fed through the API the handlers call.

The tests scrape this instead of a whole kopf operator against a cluster: the
HTTP server, collectors and calls are the operator's own
(helixrun.telemetry.operator_metrics); only the events are given on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from helixrun.telemetry import operator_metrics as om


async def main(port: int, spec: dict) -> None:
    for namespace, name, phase, pool, gpus in spec["runs"]:
        om.run_seen(namespace, name, phase, pool, gpus)
    for namespace, name in spec["restarts"]:
        om.restart_observed(namespace, name)
    for pool in spec["refused"]:
        om.plan_refused(pool)
    with om.observe_reconcile("reconcile"):
        pass
    try:
        with om.observe_reconcile("reconcile"):
            raise RuntimeError("a handler that raised")
    except RuntimeError:
        pass
    # SIGUSR1: the operator saw one more gang restart of each run in spec["restarts"].
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: [om.restart_observed(ns, run) for ns, run in spec["restarts"]])
    await om.serve_operator_metrics(port, host="127.0.0.1")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True, help="JSON: runs, restarts, refused")
    args = parser.parse_args()
    asyncio.run(main(args.port, json.loads(args.spec)))
