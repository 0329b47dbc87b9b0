"""The pure parts of the operator's watches: a stream split into events, and the index
of quarantines the incidents' events keep."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firebreak.controller import INCIDENT, QuarantineIndex, quarantine_index
from firebreak.watch import Gone, Lines, Watch, WatchFailed

EVENTS = [{"type": "ADDED", "object": {"metadata": {"name": f"p-{i}", "labels": {"x": "y" * i}}}}
          for i in range(5)]
STREAM = b"".join(json.dumps(e).encode() + b"\n" for e in EVENTS)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_lines_are_whole_events_however_the_stream_is_chunked(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    lines = Lines()
    got = [json.loads(line) for a, b in itertools.pairwise(bounds)
           for line in lines.feed(STREAM[a:b])]
    assert got == EVENTS


def test_a_line_longer_than_any_buffer_is_one_event() -> None:
    big = {"type": "MODIFIED", "object": {"data": "z" * 300_000}}
    lines = Lines()
    encoded = json.dumps(big).encode()
    assert list(lines.feed(encoded)) == []  # no newline yet: kept
    assert [json.loads(x) for x in lines.feed(b"\n\n")] == [big]


def held(name: str, uid: str, pods: list[str], resolved: bool = False) -> dict[str, Any]:
    return {"metadata": {"namespace": "shop", "name": name, "uid": f"u-{name}"},
            "spec": {"resolution": {"reason": "done"}} if resolved else {},
            "status": {"actions": [{"action": "isolateNetwork", "state": "Applied",
                                    "revert": {"namespace": "shop", "policy": f"q-{name}",
                                               "pods": [{"uid": p} for p in pods]}}]}}


def test_the_index_of_quarantines_follows_each_incident_as_it_changes() -> None:
    index = QuarantineIndex()
    a, b = (INCIDENT, "shop", "a"), (INCIDENT, "shop", "b")
    index.update(a, held("a", "u-a", ["pod-1"]))
    index.update(b, held("b", "u-b", ["pod-1", "pod-2"]))
    assert {h.name for h in index.get("shop")} == {"a", "b"}
    assert {h.name for h in index.get(("pod", "shop", "pod-2"))} == {"b"}
    assert [h.policy for h in index.get(("policy", "shop", "q-a"))] == ["q-a"]
    # Its entries are what ``quarantine_index`` says of the incident now.
    assert set(index._keys[a]) == set(quarantine_index(held("a", "u-a", ["pod-1"])))
    index.update(b, held("b", "u-b", ["pod-2"]))  # it no longer names pod-1
    assert {h.name for h in index.get(("pod", "shop", "pod-1"))} == {"a"}
    index.update(a, held("a", "u-a", ["pod-1"], resolved=True))  # resolved: holds nothing
    assert index.get(("pod", "shop", "pod-1")) == []
    index.update(b, None)  # deleted
    assert index.get("shop") == [] and index._by == {}
    assert list(index.get("elsewhere", [])) == []


async def test_an_answer_that_the_version_is_gone_lists_again_and_others_back_off() -> None:
    seen: list[tuple[str | None, str]] = []

    async def handle(kind: str | None, body: dict[str, Any]) -> None:
        seen.append((kind, body["metadata"]["name"]))

    watch = Watch(None, "/api/v1/configmaps", handle, kind="ConfigMap",  # type: ignore[arg-type]
                  api_version="v1")
    await watch._event({"type": "ADDED", "object": {"metadata": {
        "name": "a", "namespace": "n", "resourceVersion": "7"}}})
    await watch._event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert (seen, watch.version) == ([("ADDED", "a")], "9")
    with pytest.raises(Gone):
        await watch._event({"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                        "reason": "Expired"}})
    with pytest.raises(WatchFailed):
        await watch._event({"type": "ERROR", "object": {"kind": "Status", "code": 500}})
    assert watch.version == "9"  # an error moves nothing on
