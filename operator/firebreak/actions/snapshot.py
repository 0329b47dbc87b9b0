"""snapshot: keep the evidence before containment changes it.

Containment destroys evidence: a deleted pod takes its logs with it, a scale-down
erases the replicas, and Events expire after an hour. This action copies what the
API can tell about the target into the operator's namespace before later steps run:

- the target, its owner chain and (for a pod or workload target) its pods, as YAML
  without ``managedFields``;
- the recent Events about any of those objects;
- the last lines of every container's log (and of the previous instance of a
  container that restarted);
- a ``VolumeSnapshot`` of every PersistentVolumeClaim the pods mount, when the
  cluster serves ``snapshot.storage.k8s.io/v1``.

The bundle is written as immutable Secrets (default: logs and pod specs may hold
credentials) or ConfigMaps named ``firebreak-evidence-<namespace>-<incident>-<step>-<n>``,
each no larger than ``snapshotMaxBytes``, in the operator's own namespace: the
operator needs no access to Secrets anywhere else, and whoever controls the
compromised namespace cannot delete the evidence about it; part 0 carries ``index.yaml``, which lists every
file, where it is, and what could not be collected and why. Evidence that cannot be
had (a kubelet that does not serve logs, a volume API that is not installed) is
recorded as skipped; it never fails the step.

Every item's SHA-256 is kept in the index, on its object (annotation
``firebreak.dev/sha256``) and in the incident's status (the step's ``evidence``): the
record ``firebreak evidence verify`` checks the bundle against (``evidence.py``).

Evidence outlives the incident, so the step cannot be reverted. Applying again
after part 0 exists changes nothing, and names are deterministic, so a restart
never writes a second bundle.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import Field

from ..api import ActionName, EvidenceItem, EvidenceStored, TargetKind
from ..evidence import DIGEST_ANNOTATION, digest
from ..kube import ApiError, Kube, TemporaryApiError, path
from .base import (
    Action,
    ActionContext,
    ActionRefused,
    Applied,
    Params,
    Prepared,
    Record,
    RecordPart,
    ref,
)
from .workloads import Obj, controller_of, owner_chain, pods_of, read_object, read_target

EVIDENCE_LABEL = "firebreak.dev/evidence"
INDEX_KEY = "index.yaml"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"
SNAPSHOT_PLURAL = "volumesnapshots"
# A log is best-effort evidence: one short attempt, no retries (see ``_read_log``).
LOG_TIMEOUT_SECONDS = 5.0
MAX_NAME = 253
MAX_REASON = 300


class SnapshotParams(Params):
    storage: Literal["secret", "configMap"] = Field(
        default="secret",
        description="Where the bundle is written: Secrets (default; logs may hold "
                    "credentials) or ConfigMaps.")
    tail_lines: int = Field(
        default=500, ge=1, le=100_000, alias="tailLines",
        description="Lines kept from the end of each container log.")
    max_pods: int = Field(
        default=20, ge=1, le=500, alias="maxPods",
        description="Most pods collected for a workload target; the rest are listed as skipped.")
    volume_snapshot_class_name: str | None = Field(
        default=None, alias="volumeSnapshotClassName", min_length=1,
        description="VolumeSnapshotClass for the volume snapshots; the cluster default "
                    "when empty.")


class EvidenceStorage(RecordPart):
    kind: Literal["Secret", "ConfigMap"]
    namespace: str
    prefix: str
    index: str


class EvidenceObject(RecordPart):
    kind: str
    name: str
    uid: str | None = None
    namespace: str | None = None


class NotCollected(RecordPart):
    what: str
    reason: str


class PlannedVolumeSnapshot(RecordPart):
    namespace: str
    claim: str
    name: str


class SnapshotRecord(Record):
    """Where the bundle goes and what it holds, decided when the step was prepared."""

    storage: EvidenceStorage
    objects: list[EvidenceObject]
    pods_not_collected: list[NotCollected] = Field(default_factory=list)
    volume_snapshots: list[PlannedVolumeSnapshot] = Field(default_factory=list)


# --- names ----------------------------------------------------------------------


def _digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded(name: str, limit: int = MAX_NAME) -> str:
    """``name`` if it fits in ``limit`` characters, else a prefix plus a hash of all of it."""
    if len(name) <= limit:
        return name
    return f"{name[:limit - 11].rstrip('-.')}-{_digest(name)}"


def dns_label(text: str) -> str:
    """``text`` as a lowercase DNS label; a hash keeps altered names distinct."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if clean == text:
        return clean
    return f"{clean[:52].strip('-') or 'x'}-{_digest(text)}"


def evidence_prefix(ctx: ActionContext) -> str:
    """Names of the bundle's objects, without the part number. They share one namespace
    (the operator's), so the incident's namespace is part of the name."""
    return bounded(f"firebreak-evidence-{ctx.incident.namespace}-{ctx.incident.key}-"
                   f"{dns_label(ctx.step)}", MAX_NAME - 5)


def part_name(prefix: str, n: int) -> str:
    return f"{prefix}-{n}"


def volume_snapshot_name(ctx: ActionContext, claim: str) -> str:
    return bounded(f"firebreak-{ctx.incident.key}-{claim}")


def _file_key(*parts: str, suffix: str) -> str:
    """A ConfigMap/Secret key (``[-._a-zA-Z0-9]+``, <= 253 characters)."""
    key = re.sub(r"[^-._a-zA-Z0-9]+", "-", "_".join(parts))
    return bounded(key, MAX_NAME - len(suffix)) + suffix


# --- collecting -----------------------------------------------------------------


def _labels(ctx: ActionContext) -> dict[str, str]:
    return {**ctx.managed_labels(), EVIDENCE_LABEL: "true"}


def _describe(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _short(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


def _clean(obj: Obj) -> Obj:
    """The object as evidence: without managedFields (noise, often half the bytes)."""
    result = copy.deepcopy(obj)
    result.get("metadata", {}).pop("managedFields", None)
    return result


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _object_record(obj: Obj) -> EvidenceObject:
    meta = obj["metadata"]
    return EvidenceObject(kind=obj["kind"], name=meta["name"], uid=meta.get("uid"),
                          namespace=meta.get("namespace") or None)


def _claims(pod: Obj) -> list[str]:
    """PersistentVolumeClaims a pod mounts (generic ephemeral volumes included)."""
    claims = []
    for volume in pod.get("spec", {}).get("volumes") or ():
        if volume.get("persistentVolumeClaim"):
            claims.append(volume["persistentVolumeClaim"]["claimName"])
        elif volume.get("ephemeral"):
            claims.append(f"{pod['metadata']['name']}-{volume['name']}")
    return claims


def _containers(pod: Obj) -> list[tuple[str, bool]]:
    """(container, has a previous instance) for every container, init and ephemeral too."""
    spec, status = pod.get("spec", {}), pod.get("status", {})
    restarted = {
        s["name"] for key in ("initContainerStatuses", "containerStatuses",
                              "ephemeralContainerStatuses")
        for s in status.get(key) or () if s.get("restartCount", 0) > 0
    }
    names = [c["name"] for key in ("initContainers", "containers", "ephemeralContainers")
             for c in spec.get(key) or ()]
    return [(n, n in restarted) for n in names]


def _read_log(kube: Kube, pod: Obj, container: str, *, tail_lines: int, limit_bytes: int,
              previous: bool) -> str:
    """One attempt at a container log: retries (which suit writes that must happen)
    would only hold the step for a log the kubelet cannot serve."""
    meta = pod["metadata"]
    query = {"container": container, "tailLines": str(tail_lines),
             "limitBytes": str(limit_bytes)}
    if previous:
        query["previous"] = "true"
    return kube.text(path("v1", "pods", meta["namespace"], meta["name"], "log"), query=query,
                     _request_timeout=LOG_TIMEOUT_SECONDS, retry_for=0)


def _event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime")
               or event["metadata"].get("creationTimestamp") or "")


def _events(kube: Kube, kind: str, namespace: str | None, name: str) -> list[Obj]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    items = kube.items(path("v1", "events", namespace or None),
                       query={"fieldSelector": selector})
    return sorted((_clean(e) for e in items), key=_event_time)


@dataclass
class File:
    key: str
    text: str
    about: str
    kind: Literal["object", "events", "log"]
    original_bytes: int | None = None

    @property
    def size(self) -> int:
        return len(self.key.encode()) + len(self.text.encode())

    def fit(self, limit: int) -> None:
        """Truncate to ``limit`` bytes with the key; a log keeps its end, the rest its start."""
        room = limit - len(self.key.encode())
        data = self.text.encode()
        if len(data) <= room:
            return
        kept = data[len(data) - room:] if self.kind == "log" else data[:room]
        self.original_bytes = len(data)
        self.text = kept.decode("utf-8", errors="ignore")


@dataclass
class Bundle:
    files: list[File] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    logs_skipped: list[str] = field(default_factory=list)
    snapshots: list[dict[str, str]] = field(default_factory=list)
    objects: int = 0
    events: int = 0
    logs: int = 0
    warnings: list[str] = field(default_factory=list)

    def skip(self, what: str, reason: str, *, log: bool = False) -> None:
        self.skipped.append({"what": what, "reason": _short(reason)})
        if log:
            self.logs_skipped.append(_short(reason))


def _collect(ctx: ActionContext, params: SnapshotParams, record: SnapshotRecord,
             limit: int) -> Bundle:
    kube, bundle = ctx.kube, Bundle()
    pods: list[Obj] = []
    for entry in record.objects:
        kind, namespace, name = entry.kind, entry.namespace, entry.name
        what = _describe(kind, namespace, name)
        obj = read_object(kube, kind, namespace, name)
        if obj is None:
            bundle.skip(what, "no longer exists")
            continue
        if entry.uid and obj["metadata"].get("uid") != entry.uid:
            bundle.skip(what, f"replaced since the step was prepared (uid {entry.uid} "
                              f"is now {obj['metadata'].get('uid')})")
            continue
        obj.setdefault("kind", kind)
        bundle.files.append(File(_file_key(kind.lower(), name, suffix=".yaml"),
                                 _dump(_clean(obj)), what, "object"))
        bundle.objects += 1
        events = _events(kube, kind, namespace, name)
        if events:
            bundle.files.append(File(_file_key("events", kind.lower(), name, suffix=".yaml"),
                                     _dump(events), f"events of {what}", "events"))
            bundle.events += len(events)
        if kind == "Pod":
            pods.append(obj)
    for left_out in record.pods_not_collected:
        bundle.skip(left_out.what, left_out.reason)

    unreachable: dict[str, str] = {}
    for pod in pods:
        meta = pod["metadata"]
        node = pod.get("spec", {}).get("nodeName")
        for container, restarted in _containers(pod):
            for previous in (False, True) if restarted else (False,):
                what = (f"{'previous ' if previous else ''}log of container {container} "
                        f"in Pod {meta['namespace']}/{meta['name']}")
                if not node:
                    bundle.skip(what, "the pod is not scheduled to a node", log=True)
                    continue
                if node in unreachable:
                    bundle.skip(what, f"kubelet on node {node} did not answer an earlier "
                                      f"log request: {unreachable[node]}", log=True)
                    continue
                try:
                    text = _read_log(kube, pod, container, tail_lines=params.tail_lines,
                                     limit_bytes=limit, previous=previous)
                except ApiError as exc:
                    if isinstance(exc, TemporaryApiError):
                        unreachable[node] = str(exc)
                    bundle.skip(what, str(exc), log=True)
                    continue
                key = _file_key("logs", meta["name"], container,
                                suffix=".previous.log" if previous else ".log")
                bundle.files.append(File(key, text, what, "log"))
                bundle.logs += 1
    return bundle


def _take_volume_snapshots(ctx: ActionContext, params: SnapshotParams,
                           record: SnapshotRecord, bundle: Bundle) -> None:
    wanted = record.volume_snapshots
    if not wanted:
        return
    served = ctx.kube.served(SNAPSHOT_GROUP, SNAPSHOT_VERSION)
    for entry in wanted:
        result = {"namespace": entry.namespace, "name": entry.name,
                  "persistentVolumeClaim": entry.claim}
        bundle.snapshots.append(result)
        if not served:
            result["result"] = f"skipped: {SNAPSHOT_GROUP}/{SNAPSHOT_VERSION} is not served"
            continue
        spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": entry.claim}}
        if params.volume_snapshot_class_name:
            spec["volumeSnapshotClassName"] = params.volume_snapshot_class_name
        body = {
            "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
            "kind": "VolumeSnapshot",
            "metadata": {"name": entry.name, "namespace": entry.namespace,
                         "labels": _labels(ctx)},
            "spec": spec,
        }
        try:
            created = ctx.kube.create(path(f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
                                           SNAPSHOT_PLURAL, entry.namespace), body)
        except ApiError as exc:
            if isinstance(exc, TemporaryApiError):
                raise
            result["result"] = f"skipped: {_short(str(exc))}"
            bundle.warnings.append(
                f"no VolumeSnapshot of PersistentVolumeClaim {entry.namespace}/"
                f"{entry.claim}: {_short(str(exc))}")
            continue
        result["result"] = "created" if created is not None else "already existed"


# --- storing --------------------------------------------------------------------


def _pack(files: list[File], limit: int, reserved: int) -> list[list[File]]:
    """First fit, in order: part 0 keeps ``reserved`` bytes for the index."""
    parts: list[list[File]] = [[]]
    used = [reserved]
    for f in files:
        for i in range(len(parts)):
            if used[i] + f.size <= limit:
                parts[i].append(f)
                used[i] += f.size
                break
        else:
            parts.append([f])
            used.append(f.size)
    return parts


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary(bundle: Bundle, kind: str, names: list[str]) -> str:
    logs = _count(bundle.logs, "log")
    skipped_logs = bundle.logs_skipped
    if skipped_logs:
        others = len(set(skipped_logs)) - 1
        more = f"; {others} more reason{'s' if others > 1 else ''} in {INDEX_KEY}" if others else ""
        logs += f" ({len(skipped_logs)} skipped: {skipped_logs[0]}{more})"
    where = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
    message = (f"stored {_count(bundle.objects, 'object')}, {_count(bundle.events, 'event')}, "
               f"{logs} in {kind} {where}")
    other = len(bundle.skipped) - len(skipped_logs)
    if other:
        message += f" ({_count(other, 'object')} skipped)"
    if bundle.snapshots:
        made = sum(not s["result"].startswith("skipped") for s in bundle.snapshots)
        message += f"; {_count(made, 'VolumeSnapshot')}"
        skipped = [s["result"] for s in bundle.snapshots if s["result"].startswith("skipped")]
        if skipped:
            message += f" ({len(skipped)} {'; '.join(dict.fromkeys(skipped))})"
    return message


def _index(ctx: ActionContext, bundle: Bundle, storage: EvidenceStorage, names: list[str],
           parts: list[list[File]]) -> str:
    kind = storage.kind
    target = ctx.target
    files = []
    for n, part in enumerate(parts):
        for f in part:
            entry: dict[str, Any] = {"key": f.key, "in": names[n], "about": f.about,
                                     "bytes": len(f.text.encode()), "sha256": digest(f.text)}
            if f.original_bytes is not None:
                entry["truncated"] = (
                    f"{f.original_bytes} bytes; kept the "
                    f"{'last' if f.kind == 'log' else 'first'} {entry['bytes']} to fit "
                    f"snapshotMaxBytes")
            files.append(entry)
    return _dump({
        "incident": f"{ctx.incident.namespace}/{ctx.incident.name}",
        "incidentUID": ctx.incident.uid,
        "step": ctx.step,
        "target": _describe(target.kind.value, target.namespace, target.name),
        "collectedAt": ctx.now.astimezone(dt.UTC).isoformat(),
        "summary": _summary(bundle, kind, names),
        "storage": {"kind": kind, "namespace": storage.namespace, "objects": names},
        "files": files,
        "skipped": bundle.skipped,
        "volumeSnapshots": bundle.snapshots,
    })


def _layout(ctx: ActionContext, bundle: Bundle, storage: EvidenceStorage,
            limit: int) -> tuple[list[list[File]], list[str], str]:
    """Split the files over parts so that part 0 holds the index as well."""
    for f in bundle.files:
        f.fit(limit)
    reserved = 0
    for _ in range(8):
        parts = _pack(bundle.files, limit, reserved)
        names = [part_name(storage.prefix, n) for n in range(len(parts))]
        index = _index(ctx, bundle, storage, names, parts)
        needed = len(INDEX_KEY) + len(index.encode())
        if needed <= reserved:
            return parts, names, index
        if needed > limit:
            raise ActionRefused(
                f"the evidence index alone ({needed} bytes) exceeds snapshotMaxBytes "
                f"({limit}); raise FIREBREAK_SNAPSHOT_MAX_BYTES or lower maxPods")
        reserved = needed + 256
    raise AssertionError("the evidence layout did not settle")  # pragma: no cover


def _storage(kind: str, namespace: str, name: str | None = None) -> str:
    """The path of the evidence objects of a kind (Secret or ConfigMap), or of one."""
    return path("v1", "secrets" if kind == "Secret" else "configmaps", namespace, name)


def _body(ctx: ActionContext, storage: EvidenceStorage, name: str,
          data: dict[str, str]) -> dict[str, Any]:
    kind = storage.kind
    target = ctx.target
    meta = {
        "name": name,
        "namespace": storage.namespace,
        "labels": _labels(ctx),
        "annotations": {
            "firebreak.dev/incident-name": ctx.incident.name,
            "firebreak.dev/step": ctx.step,
            "firebreak.dev/target": _describe(target.kind.value, target.namespace, target.name),
            # The digest of every item, on the object too (the incident's status is the
            # record).
            DIGEST_ANNOTATION: json.dumps({key: digest(text) for key, text in data.items()},
                                          sort_keys=True),
        },
    }
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta,
                            "immutable": True}
    if kind == "Secret":
        body.update(type="Opaque", stringData=data)
    else:
        body["data"] = data
    return body


def _stored_text(obj: Obj, kind: str) -> str | None:
    text = (obj.get("data") or {}).get(INDEX_KEY)
    if text is None:
        return None
    if kind == "Secret":
        text = base64.b64decode(text).decode("utf-8", errors="replace")
    return str(text)


def _stored_summary(obj: Obj, kind: str) -> str | None:
    text = _stored_text(obj, kind)
    if text is None:
        return None
    try:
        index = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    summary = index.get("summary") if isinstance(index, dict) else None
    return str(summary) if summary else None


def _evidence(storage: EvidenceStorage, names: list[str],
              files: list[tuple[str, str, str]]) -> list[EvidenceStored]:
    """The status record of a bundle: (object, key, sha256) grouped by object, in order."""
    return [EvidenceStored(kind=storage.kind, namespace=storage.namespace, name=name,
                           items=[EvidenceItem(key=key, sha256=sha)
                                  for where, key, sha in files if where == name])
            for name in names]


def _laid_out(parts: list[list[File]], names: list[str], index: str
              ) -> list[tuple[str, str, str]]:
    return [(names[0], INDEX_KEY, digest(index)),
            *((names[n], f.key, digest(f.text)) for n, part in enumerate(parts) for f in part)]


def _stored_evidence(obj: Obj, storage: EvidenceStorage) -> list[EvidenceStored]:
    """The record of a bundle written before (a restart after part 0 was written), from
    its index; empty when the index does not say (a bundle of an older release)."""
    text = _stored_text(obj, storage.kind)
    try:
        index = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return []
    if not isinstance(index, dict) or not isinstance(index.get("files"), list):
        return []
    files = [(str(f.get("in")), str(f.get("key")), str(f.get("sha256")))
             for f in index["files"] if isinstance(f, dict)]
    if not all(len(sha) == 64 for _, _, sha in files):
        return []
    assert text is not None
    names = list(dict.fromkeys([obj["metadata"]["name"], *(where for where, _, _ in files)]))
    return _evidence(storage, names, [(names[0], INDEX_KEY, digest(text)), *files])


def _write(ctx: ActionContext, storage: EvidenceStorage, parts: list[list[File]],
           names: list[str], index: str) -> None:
    """Write parts n > 0 first and part 0 (with the index) last: part 0 existing means
    the whole bundle exists. Parts left by an interrupted earlier attempt are replaced
    (evidence objects are immutable) and extra ones removed, so the index never
    describes objects that hold something else."""
    kind, prefix, namespace = storage.kind, storage.prefix, storage.namespace
    kube, collection = ctx.kube, _storage(kind, namespace)
    for n in range(len(parts) - 1, 0, -1):
        body = _body(ctx, storage, names[n], {f.key: f.text for f in parts[n]})
        if kube.create(collection, body) is None:
            kube.request("DELETE", _storage(kind, namespace, names[n]))
            kube.request("POST", collection, body)
    selector = ",".join(f"{k}={v}" for k, v in _labels(ctx).items())
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)")
    for item in kube.items(collection, query={"labelSelector": selector}):
        match = pattern.fullmatch(item["metadata"]["name"])
        if match and int(match.group(1)) >= len(parts):
            kube.request("DELETE", _storage(kind, namespace, item["metadata"]["name"]))
    data = {INDEX_KEY: index, **{f.key: f.text for f in parts[0]}}
    kube.create(collection, _body(ctx, storage, names[0], data))


class Snapshot(Action):
    name = ActionName.snapshot
    params_model = SnapshotParams
    record_model = SnapshotRecord
    revertible = False

    def prepare(self, ctx: ActionContext, params: SnapshotParams) -> Prepared:
        kube = ctx.kube
        target = read_target(kube, ctx.target)
        target.setdefault("kind", ctx.target.kind.value)
        collected: list[Obj] = [target]
        seen = {(target["kind"], target["metadata"]["name"])}

        def add(obj: Obj) -> None:
            key = (obj["kind"], obj["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                collected.append(obj)

        for owner in owner_chain(kube, target):
            add(owner)
        pods: list[Obj] = []
        if ctx.target.kind is TargetKind.pod:
            pods = [target]
        elif ctx.target.kind is not TargetKind.node:
            pods = sorted(pods_of(kube, target), key=lambda p: p["metadata"]["name"])
            for pod in pods:  # list items carry no kind
                pod.setdefault("kind", "Pod")
        not_collected = [
            NotCollected(what=_describe("Pod", p["metadata"]["namespace"], p["metadata"]["name"]),
                         reason=f"more pods than maxPods ({params.max_pods})")
            for p in pods[params.max_pods:]
        ]
        for pod in pods[:params.max_pods]:
            add(pod)
            controller = controller_of(pod)
            if controller is None or (controller["kind"], controller["name"]) in seen:
                continue
            parent = read_object(kube, controller["kind"], pod["metadata"]["namespace"],
                                 controller["name"])
            if parent is not None:
                add(parent)
                for above in owner_chain(kube, parent):
                    add(above)

        claims = sorted({(p["metadata"]["namespace"], c) for p in pods for c in _claims(p)})
        snapshots = [PlannedVolumeSnapshot(namespace=ns, claim=claim,
                                           name=volume_snapshot_name(ctx, claim))
                     for ns, claim in claims]
        kind = "Secret" if params.storage == "secret" else "ConfigMap"
        prefix = evidence_prefix(ctx)
        record = SnapshotRecord(
            storage=EvidenceStorage(kind=kind, namespace=ctx.config.namespace, prefix=prefix,
                                    index=part_name(prefix, 0)),
            objects=[_object_record(o) for o in collected],
            pods_not_collected=not_collected,
            volume_snapshots=snapshots,
        )
        warnings = []
        message = (f"store {len(collected)} objects with their events and the logs of "
                   f"{min(len(pods), params.max_pods)} pods in {kind} "
                   f"{ctx.config.namespace}/{part_name(prefix, 0)}")
        if not_collected:
            message += f" ({len(not_collected)} more pods left out by maxPods)"
        if snapshots:
            if kube.served(SNAPSHOT_GROUP, SNAPSHOT_VERSION):
                message += f"; snapshot {len(snapshots)} PersistentVolumeClaim(s)"
            else:
                warnings.append(
                    f"{len(snapshots)} PersistentVolumeClaim(s) will not be snapshotted: "
                    f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION} is not served")
        return Prepared(
            message=message,
            objects=[ref(o.kind, o.name, o.namespace) for o in record.objects],
            record=record,
            warnings=warnings,
        )

    def apply(self, ctx: ActionContext, params: SnapshotParams,
              record: SnapshotRecord) -> Applied:
        # Where the record says: a record written before evidence moved to the
        # operator's namespace still finds its bundle.
        storage = record.storage
        kind = storage.kind
        first = part_name(storage.prefix, 0)
        existing = ctx.kube.read(_storage(kind, storage.namespace, first))
        if existing is not None:
            summary = _stored_summary(existing, kind)
            return Applied(message=summary or f"evidence already stored in {kind} {first}",
                           record=None, evidence=_stored_evidence(existing, storage))
        limit = ctx.config.snapshot_max_bytes
        bundle = _collect(ctx, params, record, limit)
        _take_volume_snapshots(ctx, params, record, bundle)
        parts, names, index = _layout(ctx, bundle, storage, limit)
        _write(ctx, storage, parts, names, index)
        return Applied(message=_summary(bundle, kind, names), record=None,
                       warnings=bundle.warnings,
                       evidence=_evidence(storage, names, _laid_out(parts, names, index)))
