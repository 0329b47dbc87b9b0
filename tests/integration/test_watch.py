"""The operator's watches against a real API server: a paginated listing, every change
after it, a watch resumed from where it stopped, and a listing again (with the
deletions it missed) when the version to resume from is gone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from firebreak.kube import Kube, path
from firebreak.watch import Watch

pytestmark = pytest.mark.cluster


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str | None, str]] = []
        self.bodies: dict[str, dict[str, Any]] = {}

    async def __call__(self, kind: str | None, body: dict[str, Any]) -> None:
        self.events.append((kind, body["metadata"]["name"]))
        self.bodies[body["metadata"]["name"]] = body

    async def until(self, *wanted: tuple[str | None, str]) -> None:
        for _ in range(200):
            if all(w in self.events for w in wanted):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never saw {wanted}; saw {self.events}")


def configmap(name: str, value: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"v": value}}


async def test_a_watch_lists_then_follows_every_change(kube: Kube, core: client.CoreV1Api,
                                                       namespace: str) -> None:
    for name in ("a", "b", "c"):
        core.create_namespaced_config_map(namespace, configmap(name))
    seen = Seen()
    watch = Watch(kube, path("v1", "configmaps", namespace), seen, kind="ConfigMap",
                  api_version="v1", page=2)  # two pages for three objects
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.synced.wait(), 10)
        listed = sorted(name for kind, name in seen.events if kind is None)
        assert {"a", "b", "c"} <= set(listed)
        assert seen.bodies["a"]["kind"] == "ConfigMap"  # listed items carry their kind
        seen.events.clear()

        made = core.create_namespaced_config_map(namespace, configmap("d"))
        core.patch_namespaced_config_map("a", namespace, {"data": {"v": "2"}})
        core.delete_namespaced_config_map("b", namespace)
        await seen.until(("ADDED", "d"), ("MODIFIED", "a"), ("DELETED", "b"))
        assert seen.bodies["a"]["data"] == {"v": "2"}
    finally:
        task.cancel()

    # Stopped, then resumed from the last version seen: only what changed meanwhile.
    seen.events.clear()
    core.patch_namespaced_config_map("c", namespace, {"data": {"v": "3"}})
    task = asyncio.create_task(watch.run())
    try:
        await seen.until(("MODIFIED", "c"))
        assert [e for e in seen.events if e[0] is None] == []  # no listing again
    finally:
        task.cancel()

    # The version to resume from is gone (a 410, as ``Gone`` marks it; the unit tests
    # show which answers mean that): listed again, and what went meanwhile is
    # delivered as deleted.
    seen.events.clear()
    core.delete_namespaced_config_map("d", namespace)
    core.create_namespaced_config_map(namespace, configmap("e"))
    watch.version = None
    task = asyncio.create_task(watch.run())
    try:
        await seen.until(("DELETED", "d"), (None, "a"), (None, "c"), (None, "e"))
        assert ("DELETED", "a") not in seen.events
        # A deletion told by a listing names the object as it was known: its uid.
        assert seen.bodies["d"]["metadata"] == {"namespace": namespace, "name": "d",
                                                "uid": made.metadata.uid}
    finally:
        task.cancel()
