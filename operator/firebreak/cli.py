"""``firebreak``: the command line. ``firebreak run`` runs the operator.

Every configuration field is a flag here and an environment variable, derived
from ``OperatorConfig`` (see ``config.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import ConfigError, OperatorConfig, env_name, flag_name, load_config


def _run(args: argparse.Namespace) -> int:
    overrides = {field: getattr(args, field) for field in OperatorConfig.model_fields}
    try:
        config = load_config(overrides=overrides)
    except ConfigError as exc:
        print(f"firebreak: {exc}", file=sys.stderr)
        return 2

    if args.kubeconfig:
        # Before the client library is imported: it reads $KUBECONFIG once, at import.
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)
    from .metrics import Server

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    metrics = Server(config.metrics_address) if config.metrics_address else None
    try:
        asyncio.run(kopf.operator(
            clusterwide=True,
            standalone=True,  # no Kopf peering: the Lease decides which replica acts (leader.py)
            memo=kopf.Memo(config=config, kubeconfig=args.kubeconfig),
            liveness_endpoint=args.liveness,
        ))
    finally:
        if metrics is not None:
            metrics.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="firebreak", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--liveness", default=None,
                     help="serve Kopf's liveness probe here, e.g. http://0.0.0.0:8081/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    for field, info in OperatorConfig.model_fields.items():
        run.add_argument(flag_name(field), dest=field, default=None, metavar="VALUE",
                         help=f"{info.description} [{env_name(field)}]")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
