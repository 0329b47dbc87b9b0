"""``firebreak``: the command line. ``firebreak run`` runs the operator; the other
commands are the responder's (``responder.py``), also installed as the kubectl plugin
``kubectl-firebreak`` (``kubectl firebreak list``).

Every configuration field of ``run`` is a flag here and an environment variable,
derived from ``OperatorConfig`` (see ``config.py``).
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
    metrics = None
    if config.metrics_address:
        try:
            metrics = Server(config.metrics_address)
        except OSError as exc:
            # Responding matters more than being watched; FirebreakMetricsDown tells.
            logging.getLogger(__name__).error("metrics not served on %s: %s",
                                              config.metrics_address, exc)
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


def _respond(args: argparse.Namespace) -> int:
    from .responder import (
        CommandError,
        Session,
        render_incident,
        render_list,
        render_verification,
    )

    try:
        session = Session.connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "list":
            print(render_list(session.incidents(args.all_namespaces), session.clock()))
        elif args.command == "show":
            print(render_incident(session.incident(args.name)))
        elif args.command in ("approve", "reject"):
            print(session.decide(args.name, args.command, args.reason))
        elif args.command == "resolve":
            print(session.resolve(args.name, args.reason))
        else:  # evidence verify
            recorded, findings = session.verify(args.name)
            return render_verification(f"{session.namespace}/{args.name}", recorded, findings,
                                       sys.stdout)
    except CommandError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 1
    return 0


def _connection(command: argparse.ArgumentParser) -> None:
    command.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then "
                                              "~/.kube/config)")
    command.add_argument("--context", help="the kubeconfig context to use")
    command.add_argument("-n", "--namespace",
                         help="the incident's namespace (default: the context's)")


def parser(prog: str = "firebreak", with_run: bool = True) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__)
    top.set_defaults(prog=prog)
    sub = top.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list incidents")
    _connection(listing)
    listing.add_argument("-A", "--all-namespaces", action="store_true",
                         help="incidents of every namespace")
    show = sub.add_parser("show", help="an incident as a readable timeline")
    _connection(show)
    show.add_argument("name")
    for verb, text in (("approve", "approve the playbook's steps, in your name"),
                       ("reject", "reject them: no step runs")):
        decide = sub.add_parser(verb, help=text)
        _connection(decide)
        decide.add_argument("name")
        decide.add_argument("--reason", required=verb == "reject", help="why")
    resolve = sub.add_parser("resolve", help="end the incident: its applied steps are "
                                             "reverted")
    _connection(resolve)
    resolve.add_argument("name")
    resolve.add_argument("--reason", required=True, help="why it is over")
    found = sub.add_parser("evidence", help="the incident's evidence")
    checks = found.add_subparsers(dest="evidence_command", required=True)
    verify = checks.add_parser("verify", help="check every evidence item against the SHA-256 "
                                              "recorded in the incident")
    _connection(verify)
    verify.add_argument("name")
    if not with_run:
        return top
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
    return _respond(args)


def plugin(argv: list[str] | None = None) -> int:
    """``kubectl firebreak ...``: the responder's commands as a kubectl plugin."""
    return _respond(parser("kubectl firebreak", with_run=False).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
