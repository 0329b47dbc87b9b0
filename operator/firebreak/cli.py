"""``firebreak``: the command line. ``firebreak run`` runs the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import ConfigError, load_config


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(
            namespace=args.namespace,
            protected_namespaces=(frozenset(n.strip() for n in args.protected_namespaces.split(",")
                                            if n.strip())
                                  if args.protected_namespaces is not None else None),
            min_schedulable_nodes=args.min_schedulable_nodes,
            min_healthy_replicas=args.min_healthy_replicas,
        )
    except ConfigError as exc:
        print(f"firebreak: {exc}", file=sys.stderr)
        return 2

    if args.kubeconfig:
        # Before the client library is imported: it reads $KUBECONFIG once, at import.
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    asyncio.run(kopf.operator(
        clusterwide=True,
        standalone=True,  # one replica; see manifests/deployment.yaml
        memo=kopf.Memo(config=config, kubeconfig=args.kubeconfig),
        liveness_endpoint=args.liveness,
    ))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firebreak", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--namespace", help="the operator's namespace [FIREBREAK_NAMESPACE]")
    run.add_argument("--protected-namespaces",
                     help="comma-separated namespaces never acted on [FIREBREAK_PROTECTED_NAMESPACES]")
    run.add_argument("--min-schedulable-nodes", type=int,
                     help="cordonNode keeps at least this many nodes schedulable "
                          "[FIREBREAK_MIN_SCHEDULABLE_NODES]")
    run.add_argument("--min-healthy-replicas", type=int,
                     help="deletePod keeps at least this many ready replicas "
                          "[FIREBREAK_MIN_HEALTHY_REPLICAS]")
    run.add_argument("--liveness", default=None,
                     help="serve Kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
