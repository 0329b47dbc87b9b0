"""Evidence you can trust later: digests, and checking a bundle against them. Pure.

Every item the snapshot action writes (a file in a Secret or ConfigMap of the
operator's namespace) has its SHA-256 recorded three times: in the incident's status
(``status.actions[].evidence``, the record that counts), in the bundle's index, and
on the object itself (annotation ``firebreak.dev/sha256``). Evidence objects are
immutable; a changed item means an object deleted and written again, and ``verify``
says so by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .api import EvidenceStored

DIGEST_ANNOTATION = "firebreak.dev/sha256"


def digest(data: bytes | str) -> str:
    """SHA-256 in hex of the bytes (text as UTF-8, as the API server stores it)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class StoredObject:
    """An evidence object as read back: its items' bytes, and whether it is immutable."""

    immutable: bool
    items: Mapping[str, bytes]


@dataclass(frozen=True)
class Finding:
    """One disagreement between the record and what is stored."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def where(kind: str, namespace: str, name: str, key: str | None = None) -> str:
    base = f"{kind} {namespace}/{name}"
    return f"{base} {key}" if key is not None else base


def verify(recorded: Sequence[EvidenceStored],
           stored: Mapping[tuple[str, str, str], StoredObject | None]) -> list[Finding]:
    """Every way the stored objects differ from the record; empty when they agree."""
    findings = []
    for entry in recorded:
        obj = stored.get((entry.kind, entry.namespace, entry.name))
        if obj is None:
            findings.append(Finding(where(entry.kind, entry.namespace, entry.name),
                                    "missing: the object is gone"))
            continue
        if not obj.immutable:
            findings.append(Finding(where(entry.kind, entry.namespace, entry.name),
                                    "not immutable: it can be changed in place"))
        expected = {item.key: item.sha256 for item in entry.items}
        for key, sha in expected.items():
            at = where(entry.kind, entry.namespace, entry.name, key)
            if key not in obj.items:
                findings.append(Finding(at, "missing: the item is gone"))
                continue
            found = digest(obj.items[key])
            if found != sha:
                findings.append(Finding(at, f"changed: SHA-256 {found}, recorded {sha}"))
        for key in sorted(set(obj.items) - set(expected)):
            findings.append(Finding(where(entry.kind, entry.namespace, entry.name, key),
                                    "not recorded: an item the record does not know"))
    return findings


def counted(recorded: Sequence[EvidenceStored]) -> tuple[int, int]:
    """How many objects and items the record holds."""
    return len(recorded), sum(len(entry.items) for entry in recorded)
