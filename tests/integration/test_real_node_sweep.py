"""A real node whose owner was killed leaves host changes behind; the next start
sweeps them from the node's journal alone. Needs root (it makes a bridge and a
cgroup of its own, named apart from the session's real node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controlplane import realnode
from tests.controlplane.realnode import Journal

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="makes a bridge and a cgroup: needs root on Linux")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sweep_undoes_a_killed_nodes_journal(tmp_path: Path) -> None:
    state = tmp_path / "realnode"
    state.mkdir()
    (state / "owner.pid").write_text(str(_dead_pid()))
    (state / "nft-tables.before").write_text(
        subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout)
    (state / "ipsets.before").write_text(
        subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout)
    journal = Journal(state / "journal")
    bridge = f"fbsweep{os.getpid() % 1000}"
    journal.add("link", bridge)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    (mount, _kind) = next(m for m in realnode._cgroup_mounts() if m[1] == "cgroup")
    cgroup = mount / f"firebreak-sweep-{os.getpid()}"
    journal.add("cgroup", str(cgroup))
    (cgroup / "child").mkdir(parents=True)
    ipset = f"firebreak-sweep-{os.getpid()}"
    subprocess.run(["ipset", "create", ipset, "hash:ip"], check=True)
    realnode._registry().mkdir(parents=True, exist_ok=True)
    realnode._registry_entry(state).write_text(str(state))

    live = realnode.live_node_folders()  # the session's own real node, if it runs

    realnode.sweep()

    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert not cgroup.exists()
    sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    if live:
        # Netfilter tables, chains and sets are shared by the node that runs: a sweep
        # leaves them to it, and they go when that node stops.
        assert ipset in sets
        subprocess.run(["ipset", "destroy", ipset], check=True)
    else:
        assert ipset not in sets
    assert not realnode._registry_entry(state).exists()
    assert not state.exists()
