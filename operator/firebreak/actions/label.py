"""label: mark the target object, for people and for other controls to act on.

Pods and workloads only: a Node's labels steer the scheduler, so relabelling one
could draw workloads onto a compromised node (cordonNode contains nodes).

A label is the lightest containment there is: it changes nothing by itself, but
policies written against it do (a NetworkPolicy or admission rule that selects
``security.example.com/quarantine=true``, a dashboard that lists marked pods).

The value each key had before is recorded before anything is written, so a revert
restores it (or removes a key that was absent). A revert only touches keys that
still hold the value this step set: a label someone changed since is theirs now,
and is left alone, with a note in the step's message.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from ..api import ActionName, TargetKind
from ..kube import MERGE_PATCH, Conflict, Invalid, Kube, NotFound, TemporaryApiError, path
from .base import Action, ActionContext, ActionRefused, Applied, Params, Prepared, Record, ref
from .workloads import RESOURCES, Obj, controller_of, read_object, read_target

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

REVERT_ATTEMPTS = 5


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key, or None (Kubernetes' qualified-name rules)."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "the prefix before '/' must not be empty"
        if len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
            return ("the prefix must be a DNS subdomain: lowercase letters, digits, '-' and "
                    "'.', at most 253 characters, starting and ending with a letter or digit")
    if not name:
        return "the name part must not be empty"
    if len(name) > 63 or not _NAME.fullmatch(name):
        return ("the name part must be at most 63 characters of letters, digits, '-', '_' "
                "and '.', starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if value == "":
        return None
    if len(value) > 63 or not _NAME.fullmatch(value):
        return ("a value must be empty or at most 63 characters of letters, digits, '-', '_' "
                "and '.', starting and ending with a letter or digit")
    return None


class LabelParams(Params):
    labels: dict[str, str] = Field(
        min_length=1, description="Labels to set on the target object.")

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = []
        for key, value in labels.items():
            if (problem := label_key_problem(key)) is not None:
                problems.append(f"key {key!r}: {problem}")
            if (problem := label_value_problem(value)) is not None:
                problems.append(f"value {value!r} of {key!r}: {problem}")
        if problems:
            raise ValueError("invalid label(s): " + "; ".join(problems))
        return labels


class LabelRecord(Record):
    """The labelled object (its uid guards against a same-named successor), the labels
    set and the value each key had before (None: absent)."""

    kind: str
    namespace: str | None = None
    name: str
    uid: str
    labels: dict[str, str]
    previous: dict[str, str | None]

    @property
    def where(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


def _patch(kube: Kube, record: LabelRecord, metadata: dict[str, Any]) -> Obj:
    """Merge-patch the object's metadata. The uid in the patch guards against acting on
    another object of the same name: uid is immutable, so the API server refuses (422)
    a patch meant for the object that was there before."""
    where = path("v1", "nodes", name=record.name) if record.kind == "Node" \
        else path(*RESOURCES[record.kind], record.namespace, record.name)
    body = {"metadata": {"uid": record.uid, **metadata}}
    return kube.request("PATCH", where, body, content_type=MERGE_PATCH)


def _pairs(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def _selector_warnings(ctx: ActionContext, target: Obj, labels: dict[str, str]) -> list[str]:
    """A pod whose controller selects it by a label we change is released and replaced."""
    if ctx.target.kind is not TargetKind.pod:
        return []
    owner = controller_of(target)
    if owner is None:
        return []
    workload = read_object(ctx.kube, owner["kind"], ctx.target.namespace, owner["name"])
    if workload is None:
        return []
    selected = (workload.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    current = target["metadata"].get("labels") or {}
    changed = sorted(k for k, v in labels.items() if k in selected and current.get(k) != v)
    if not changed:
        return []
    return [f"{owner['kind']} {owner['name']} selects its pods by {', '.join(changed)}: the "
            f"relabelled pod leaves it and a replacement is created"]


class Label(Action):
    name = ActionName.label
    params_model = LabelParams
    record_model = LabelRecord

    def prepare(self, ctx: ActionContext, params: LabelParams) -> Prepared:
        if ctx.target.kind is TargetKind.node:
            # A node's labels steer the scheduler (nodeSelector, affinity): relabelling one
            # could draw workloads onto a compromised node. The admission policy
            # firebreak-cordon-only refuses it too; cordonNode is the node's containment.
            raise ActionRefused("label does not act on Nodes (their labels steer the "
                                "scheduler); use cordonNode")
        target = read_target(ctx.kube, ctx.target)
        meta = target["metadata"]
        current = meta.get("labels") or {}
        record = LabelRecord(
            kind=ctx.target.kind.value,
            namespace=meta.get("namespace"),
            name=meta["name"],
            uid=meta["uid"],
            labels=dict(params.labels),
            previous={k: current.get(k) for k in params.labels},
        )
        unchanged = [k for k, v in params.labels.items() if current.get(k) == v]
        message = f"label {record.where} with {_pairs(params.labels)}"
        if unchanged:
            message += f" ({', '.join(unchanged)} already set)"
        return Prepared(
            message=message,
            objects=[ref(record.kind, record.name, record.namespace)],
            record=record,
            warnings=_selector_warnings(ctx, target, params.labels),
        )

    def apply(self, ctx: ActionContext, params: LabelParams, record: LabelRecord) -> Applied:
        where = record.where
        current = self._read(ctx, record)
        if (gone := self._gone(record, current)) is not None:
            raise ActionRefused(f"{where} {gone} since the step was prepared")
        assert current is not None
        labels = current["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in record.labels.items()):
            try:
                _patch(ctx.kube, record, {"labels": record.labels})
            except (NotFound, Invalid) as exc:
                # Replaced or deleted between the read and the patch?
                if gone := self._gone(record, self._read(ctx, record)):
                    raise ActionRefused(f"{where} {gone} since the step was "
                                        f"prepared") from exc
                raise
        return Applied(message=f"labelled {where} with {_pairs(record.labels)}",
                       record=record)

    def revert(self, ctx: ActionContext, record: LabelRecord) -> str:
        where = record.where
        for _ in range(REVERT_ATTEMPTS):
            current = self._read(ctx, record)
            if (gone := self._gone(record, current)) is not None:
                return f"{where} {gone}; nothing to revert"
            assert current is not None
            labels = current["metadata"].get("labels") or {}
            restore: dict[str, str | None] = {}
            left: list[str] = []
            for key, ours in record.labels.items():
                previous, now = record.previous.get(key), labels.get(key)
                if now == previous:
                    continue
                if now == ours:
                    restore[key] = previous
                else:
                    shown = "removed" if now is None else f"now {now!r}"
                    left.append(f"{key} ({shown}, not {ours!r} as set)")
            message = self._revert_message(where, restore, left)
            if not restore:
                return message
            try:
                # The resourceVersion makes the patch fail (409) if the labels changed
                # after we read them; then read and decide again.
                _patch(ctx.kube, record, {"labels": restore,
                                          "resourceVersion": current["metadata"]["resourceVersion"]})
            except Conflict:
                continue  # changed since read: decide again
            except (NotFound, Invalid):
                if self._gone(record, self._read(ctx, record)):
                    continue  # deleted or replaced: decide again
                raise
            return message
        raise TemporaryApiError(f"{where} kept changing while its labels were being restored")

    @staticmethod
    def _read(ctx: ActionContext, record: LabelRecord) -> Obj | None:
        return read_object(ctx.kube, record.kind, record.namespace, record.name)

    @staticmethod
    def _gone(record: LabelRecord, obj: Obj | None) -> str | None:
        """Why ``obj`` is not the recorded object any more, or None when it is."""
        if obj is None:
            return "no longer exists"
        if obj["metadata"].get("uid") != record.uid:
            return "was replaced by another object of the same name"
        return None

    @staticmethod
    def _revert_message(where: str, restore: dict[str, str | None], left: list[str]) -> str:
        parts = []
        removed = [k for k, v in restore.items() if v is None]
        restored = [f"{k}={v}" for k, v in restore.items() if v is not None]
        if restored:
            parts.append(f"restored {', '.join(restored)}")
        if removed:
            parts.append(f"removed {', '.join(removed)}")
        if left:
            parts.append(f"left {', '.join(left)}: changed by someone else since")
        return f"{where}: {'; '.join(parts)}" if parts else f"{where}: labels already as before"
