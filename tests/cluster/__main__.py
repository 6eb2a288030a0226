"""python -m tests.cluster up|down|status|build [--state-dir .cluster] [--real-node]"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .controlplane import ClusterError, ControlPlane, bin_dir_for_build, running_control_plane


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.cluster")
    ap.add_argument("command", choices=["up", "down", "status", "build"])
    ap.add_argument("--state-dir", default=os.environ.get("HELIXRUN_CLUSTER_STATE", ".cluster"))
    ap.add_argument("--timeout", type=float, default=None, help="startup timeout scale in s (default 360)")
    ap.add_argument("--real-node", action="store_true",
                    help="up: also start a real node (containerd + kubelet, pool `local`); needs root")
    args = ap.parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)

    try:
        if args.command == "build":
            print(bin_dir_for_build(build=True))
            return 0
        if args.command == "status":
            cp = running_control_plane(state_dir)
            if cp is None:
                print(f"no control plane running in {state_dir}")
                return 1
            print(json.dumps({**cp.describe(), "alive": cp.alive()}, indent=2))
            return 0
        if args.command == "up":
            if running_control_plane(state_dir) is not None:
                print(f"control plane already running in {state_dir}", file=sys.stderr)
                print(os.path.join(state_dir, "kubeconfig"))
                return 0
            stale = os.path.join(state_dir, ControlPlane.STATE_FILE)
            if os.path.exists(stale):
                os.unlink(stale)
            t0 = time.monotonic()
            cp = ControlPlane(state_dir=state_dir, keep_state=True, startup_timeout=args.timeout,
                              real_node=args.real_node)
            cp.start()
            print(
                f"control plane up in {time.monotonic() - t0:.1f}s: server {cp.server}; "
                f"export KUBECONFIG={cp.kubeconfig}; logs in {cp.logs_dir}",
                file=sys.stderr,
            )
            print(cp.kubeconfig)
            return 0
        if args.command == "down":
            if not os.path.exists(os.path.join(state_dir, ControlPlane.STATE_FILE)):
                print(f"no control plane recorded in {state_dir}", file=sys.stderr)
                return 0
            t0 = time.monotonic()
            cp = ControlPlane.from_state(state_dir)
            cp.stop(keep_state=True)
            print(f"control plane stopped in {time.monotonic() - t0:.1f}s", file=sys.stderr)
            return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
