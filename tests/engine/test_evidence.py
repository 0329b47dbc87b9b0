"""Evidence digests over the engine: every item the snapshot step writes has its SHA-256
in the incident's status, in the bundle's index and on its object, and a restart after
the bundle was written records the same digests."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

import pytest
import yaml

from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.evidence import DIGEST_ANNOTATION
from tests.engine.recorder import Crash, Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    playbook,
    status,
    step,
)

BOOK = [playbook("evidence", step("evidence", "snapshot"), step("isolate", "isolateNetwork"))]


def world(api: Recorder) -> None:
    add_nodes(api, "node-a", "node-b")
    add_app(api)
    api.logs[("web-5d9c-0", "app", "")] = "stratum+tcp://pool.example:3333\n"
    add_incident(api)


@pytest.fixture(autouse=True)
def _world(api: Recorder) -> None:
    world(api)


def stored_items(api: Recorder) -> dict[str, dict[str, bytes]]:
    return {s["metadata"]["name"]: {k: base64.b64decode(v) for k, v in s["data"].items()}
            for s in api.all("secrets", OPERATOR_NS)}


def test_every_item_has_its_digest_in_status_in_the_index_and_on_its_object(
        api: Recorder, engine: Engine) -> None:
    engine.reconcile(NS, "miner", BOOK)
    (recorded,) = [a["evidence"] for a in status(api)["actions"] if a["step"] == "evidence"]
    items = stored_items(api)
    assert [e["name"] for e in recorded] == sorted(items)
    for entry in recorded:
        assert (entry["kind"], entry["namespace"]) == ("Secret", OPERATOR_NS)
        data = items[entry["name"]]
        digests = {i["key"]: i["sha256"] for i in entry["items"]}
        assert digests == {k: hashlib.sha256(v).hexdigest() for k, v in data.items()}
        secret = api.get("secrets", OPERATOR_NS, entry["name"])
        assert secret is not None and secret["immutable"] is True
        assert json.loads(secret["metadata"]["annotations"][DIGEST_ANNOTATION]) == digests
    index = yaml.safe_load(items[recorded[0]["name"]]["index.yaml"])
    assert {f["key"]: f["sha256"] for f in index["files"]} == {
        i["key"]: i["sha256"] for e in recorded for i in e["items"] if i["key"] != "index.yaml"}
    assert "logs_web-5d9c-0_app.log" in {f["key"] for f in index["files"]}


def test_a_restart_after_the_bundle_was_written_records_the_same_digests(
        api: Recorder, clock: Clock, make_engine: Callable[[], Engine]) -> None:
    reference = Recorder(clock=clock)
    world(reference)
    Engine(kube=reference.kube(), config=OperatorConfig(namespace=OPERATOR_NS),
           actions=registry(), emit=lambda *_: None, clock=clock).reconcile(NS, "miner", BOOK)
    # Die right after the bundle's (only) part lands, before its outcome is in status.
    api.crash_after = 1 + next(i for i, w in enumerate(reference.writes)
                               if w.what.startswith("create secrets"))
    with pytest.raises(Crash):
        make_engine().reconcile(NS, "miner", BOOK)
    api.crash_after = None
    assert [a["state"] for a in status(api)["actions"]] == ["Running", "Pending"]
    make_engine().reconcile(NS, "miner", BOOK)
    assert len(api.written("secrets")) == 1  # found, not written again
    (recorded,) = [a["evidence"] for a in status(api)["actions"] if a["step"] == "evidence"]
    items = stored_items(api)
    assert {(e["name"], i["key"], i["sha256"]) for e in recorded for i in e["items"]} == {
        (name, k, hashlib.sha256(v).hexdigest()) for name, data in items.items()
        for k, v in data.items()}
