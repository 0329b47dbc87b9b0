"""`python -m tests.controlplane {build,up,down}`: the commands behind `make cluster`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .binaries import ensure_binaries
from .cluster import LocalCluster, stop_detached


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) control-plane binaries")
    up = sub.add_parser("up", help="start a cluster that keeps running after this command")
    up.add_argument("--dir", type=Path, default=Path(".cluster"))
    up.add_argument("--nodes", type=int, default=3, help="kwok's fake nodes")
    up.add_argument("--no-real-node", action="store_true",
                    help="start no real node (it runs by default where the host allows it)")
    down = sub.add_parser("down", help="stop the cluster started by `up`")
    down.add_argument("--dir", type=Path, default=Path(".cluster"))
    args = parser.parse_args()

    if args.command == "build":
        print(ensure_binaries().directory)
        return 0
    if args.command == "up":
        workdir = args.dir.resolve()
        if (workdir / "state.json").exists():
            print(f"A cluster is already running from {workdir}; `make cluster-down` stops it.")
            return 1
        binaries = ensure_binaries()
        began = time.monotonic()
        cluster = LocalCluster(workdir, binaries, nodes=args.nodes, detach=True,
                               want_real_node=not args.no_real_node)
        cluster.start()
        print(f"Cluster ready in {time.monotonic() - began:.1f}s at {cluster.server}")
        if cluster.real_node is not None:
            node = cluster.real_node
            print(f"  real node {node.name} ({node.ip}, pods on {node.subnet}) Ready in "
                  f"{node.timings['node_ready_seconds']:.1f}s; pods need the toleration "
                  f"and nodeSelector firebreak.dev/real-node=true")
        else:
            print(f"  no real node: {cluster.real_node_failure or cluster.real_node_unavailable}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  kubectl: {binaries['kubectl']}")
        return 0
    stopped = stop_detached(args.dir.resolve())
    print("Cluster stopped." if stopped else "No cluster was running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
