"""`helixrun operator`: run the kopf operator with helixrun's handlers."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("operator", help="run the operator (kopf) against the current cluster")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    parser.add_argument("--standalone", action="store_true", help="no peering: the only instance")
    parser.add_argument("--peering", help="peering object name, for several replicas")
    parser.add_argument("--priority", type=int, default=0, help="peering priority; replicas need distinct values")
    parser.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    import kopf

    import helixrun.controller.handlers  # noqa: F401  (registers the handlers)

    # Each object's lines start with [namespace/name]: without it a busy operator's log names no run.
    kopf.configure(verbose=args.verbose, log_prefix=True)
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    )
    return 0
