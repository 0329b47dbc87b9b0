"""Evidence digests and the check of a bundle against the incident's record. Pure."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from firebreak.api import EvidenceItem, EvidenceStored
from firebreak.evidence import DIGEST_ANNOTATION, Finding, StoredObject, counted, digest, verify, where

LOG = "line 1\nñ line 2\n"
SHA_LOG = hashlib.sha256(LOG.encode()).hexdigest()
SHA_INDEX = hashlib.sha256(b"files: []\n").hexdigest()
NS = "firebreak-system"


def test_the_digests_annotation_is_firebreaks_own() -> None:
    assert DIGEST_ANNOTATION == "firebreak.dev/sha256"


def test_digest_is_sha256_of_the_utf8_bytes() -> None:
    assert digest(LOG) == SHA_LOG == digest(LOG.encode())
    assert digest("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def record(*names: str) -> list[EvidenceStored]:
    return [EvidenceStored(kind="Secret", namespace=NS, name=name, items=[
        EvidenceItem(key="index.yaml", sha256=SHA_INDEX),
        EvidenceItem(key="logs_web-1_app.log", sha256=SHA_LOG)]) for name in names]


def stored(immutable: bool = True, **items: bytes) -> StoredObject:
    return StoredObject(immutable, {"index.yaml": b"files: []\n",
                                    "logs_web-1_app.log": LOG.encode(), **items})


def test_a_bundle_as_recorded_verifies() -> None:
    assert verify(record("ev-0", "ev-1"), {("Secret", NS, "ev-0"): stored(),
                                           ("Secret", NS, "ev-1"): stored()}) == []
    assert counted(record("ev-0", "ev-1")) == (2, 4)


def test_every_difference_is_named() -> None:
    tampered = StoredObject(False, {"index.yaml": b"files: []\n",
                                    "logs_web-1_app.log": b"nothing to see\n",
                                    "extra.yaml": b"x"})
    found = verify(record("ev-0", "ev-1", "ev-2"), {
        ("Secret", NS, "ev-0"): tampered,
        ("Secret", NS, "ev-1"): StoredObject(True, {"index.yaml": b"files: []\n"}),
        ("Secret", NS, "ev-2"): None,
    })
    assert [str(f) for f in found] == [
        f"Secret {NS}/ev-0: not immutable: it can be changed in place",
        f"Secret {NS}/ev-0 logs_web-1_app.log: changed: SHA-256 "
        f"{digest('nothing to see' + chr(10))}, recorded {SHA_LOG}",
        f"Secret {NS}/ev-0 extra.yaml: not recorded: an item the record does not know",
        f"Secret {NS}/ev-1 logs_web-1_app.log: missing: the item is gone",
        f"Secret {NS}/ev-2: missing: the object is gone",
    ]


def test_an_object_of_another_kind_is_not_taken_for_the_recorded_one() -> None:
    assert [f.problem for f in verify(record("ev-0"), {("ConfigMap", NS, "ev-0"): stored()})] \
        == ["missing: the object is gone"]


def test_findings_and_stored_objects_cannot_change() -> None:
    finding = Finding(where("ConfigMap", NS, "x", "k"), "p")
    assert str(finding) == f"ConfigMap {NS}/x k: p"
    assert where("Secret", NS, "x") == f"Secret {NS}/x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.problem = "q"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored().immutable = False  # type: ignore[misc]
