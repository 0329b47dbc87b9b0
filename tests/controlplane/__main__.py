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
    up.add_argument("--nodes", type=int, default=3)
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
        cluster = LocalCluster(workdir, binaries, nodes=args.nodes, detach=True)
        cluster.start()
        print(f"Cluster ready in {time.monotonic() - began:.1f}s at {cluster.server}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  kubectl: {binaries['kubectl']}")
        return 0
    stopped = stop_detached(args.dir.resolve())
    print("Cluster stopped." if stopped else "No cluster was running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
