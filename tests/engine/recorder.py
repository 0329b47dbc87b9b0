"""A recording, in-memory stand-in for the Kubernetes API, for the engine tier.

It takes the place of the client's connection pool (``RESTClientObject.pool_manager``),
so everything above it runs as in production: ``Kube``, its retries and error
taxonomy, the generated client's URL building, serialisation, content types and
deserialisation. Below it there is no HTTP: requests are answered from dicts.

What it models is what the operator relies on, with the API server's status codes:
create (409 when the name is taken), get and list (label and field selectors),
merge patches (a ``resourceVersion`` in the patch is a precondition: 409; a ``uid``
that differs is refused: 422), replaces (PUT, with the same precondition), delete
(404 when absent; a uid precondition: 409; finalizers hold the object with a
deletionTimestamp), the ``status`` subresource (a patch there changes only status; a
patch to the object never changes status), ``metadata.generation`` bumped by spec
changes, the ``scale`` subresource, pod logs and the API group list.

Every write is recorded, in order, as a ``Write``; tests assert the exact writes.
``crash_after = n`` makes the n-th write land and then raises ``Crash`` (a
BaseException, like the process being killed: the caller never sees the answer).
``fail(...)`` makes chosen requests answer with an error status. With
``strict_namespaces`` a namespaced create needs its Namespace object (404 otherwise,
as from the API server); without it every namespace exists.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import urllib3
from kubernetes import client

from firebreak.kube import Kube

Obj = dict[str, Any]
HOST = "https://recorder.invalid"

# resource -> (apiVersion, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "namespaces": ("v1", "Namespace", False),
    "nodes": ("v1", "Node", False),
    "pods": ("v1", "Pod", True),
    "events": ("v1", "Event", True),
    "secrets": ("v1", "Secret", True),
    "configmaps": ("v1", "ConfigMap", True),
    "deployments": ("apps/v1", "Deployment", True),
    "replicasets": ("apps/v1", "ReplicaSet", True),
    "statefulsets": ("apps/v1", "StatefulSet", True),
    "daemonsets": ("apps/v1", "DaemonSet", True),
    "jobs": ("batch/v1", "Job", True),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy", True),
    "securityincidents": ("firebreak.dev/v1alpha1", "SecurityIncident", True),
    "responseplaybooks": ("firebreak.dev/v1alpha1", "ResponsePlaybook", True),
    "volumesnapshots": ("snapshot.storage.k8s.io/v1", "VolumeSnapshot", True),
    "leases": ("coordination.k8s.io/v1", "Lease", True),
}
KIND_TO_RESOURCE = {kind: resource for resource, (_, kind, _) in RESOURCES.items()}
# Custom resources: every change but to metadata and status bumps the generation.
# Built-in kinds bump it on spec changes only.
CUSTOM = {"securityincidents", "responseplaybooks", "volumesnapshots"}
REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           410: "Gone", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable"}
PHRASES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           410: "Gone", 422: "Unprocessable Entity", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Crash(BaseException):
    """The process dies here: no handler runs, no clean-up, no last write."""


class Refusal(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")


@dataclass(frozen=True)
class Write:
    """One write that reached the API, as the API received it."""

    verb: str  # create | patch | delete
    resource: str
    namespace: str | None
    name: str
    subresource: str | None = None
    body: Any = None
    content_type: str | None = None
    # False when the API server stored no change (a patch that set what was there).
    changed: bool = True

    @property
    def what(self) -> str:
        """A short, stable description: ``patch securityincidents/status shop/web``."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.verb} {resource} {where}"


@dataclass
class Failure:
    verb: str
    resource: str
    status: int
    message: str
    times: int | None
    name: str | None = None
    subresource: str | None = None

    def matches(self, verb: str, resource: str, name: str, subresource: str | None) -> bool:
        return (self.verb in (verb, "*") and self.resource in (resource, "*")
                and self.name in (None, name) and self.subresource == subresource
                and self.times != 0)


@dataclass
class Recorder:
    """The API's objects, the writes it received, and the faults to inject."""

    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    objects: dict[tuple[str, str | None, str], Obj] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    groups: list[tuple[str, str]] = field(default_factory=lambda: [
        ("apps", "v1"), ("batch", "v1"), ("networking.k8s.io", "v1"), ("firebreak.dev", "v1alpha1")])
    crash_after: int | None = None
    failures: list[Failure] = field(default_factory=list)
    strict_namespaces: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._versions = itertools.count(1000)
        self._names = itertools.count(1)

    # --- the test's side ---------------------------------------------------------

    def kube(self) -> Kube:
        """A ``Kube`` whose every request lands here."""
        configuration = client.Configuration(host=HOST)
        api_client = client.ApiClient(configuration)
        api_client.rest_client.pool_manager = self  # type: ignore[assignment]
        return Kube(api_client, transport="urllib3")

    def add(self, obj: Obj) -> Obj:
        """Put an object in place without recording a write (the world before the test)."""
        obj = copy.deepcopy(obj)
        resource = KIND_TO_RESOURCE[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        api_version, _, namespaced = RESOURCES[resource]
        obj.setdefault("apiVersion", api_version)
        # Derived from the name, so the same world built twice has the same uids.
        identity = f"{resource}/{meta.get('namespace')}/{meta['name']}"
        meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, identity)))
        meta.setdefault("creationTimestamp", _timestamp(self.clock()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        with self._lock:
            self.objects[(resource, meta.get("namespace") if namespaced else None,
                          meta["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        with self._lock:
            found = self.objects.get((resource, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def all(self, resource: str, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items())
                    if r == resource and namespace in (None, ns)]

    def fail(self, verb: str, resource: str, status: int, message: str = "injected",
             times: int | None = None, name: str | None = None,
             subresource: str | None = None) -> None:
        """Answer matching requests (verb: get, list, create, patch, delete or *) with
        ``status``: ``times`` times, or always when None."""
        self.failures.append(Failure(verb, resource, status, message, times, name, subresource))

    def written(self, *resources: str) -> list[str]:
        """The writes so far, as ``Write.what``, optionally only to these resources."""
        return [w.what for w in self.writes if not resources or w.resource in resources]

    def effective(self, *resources: str) -> list[Write]:
        """The writes that changed something, optionally only to these resources."""
        return [w for w in self.writes if w.changed and (not resources or w.resource in resources)]

    # --- the client's side: urllib3.PoolManager.request --------------------------

    def request(self, method: str, url: str, body: str | bytes | None = None,
                headers: dict[str, str] | None = None, **_: Any) -> urllib3.HTTPResponse:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = headers or {}
        with self._lock:
            self.requests.append((method, parts.path))
            try:
                code, payload = self._serve(method, parts.path, query, headers, body)
            except Refusal as refusal:
                code = refusal.code
                payload = _status(refusal.code, refusal.message, refusal.reason)
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        return urllib3.HTTPResponse(
            body=io.BytesIO(data), headers={"Content-Type": content_type}, status=code,
            reason=PHRASES.get(code, "OK"), preload_content=False)

    def clear(self) -> None:
        """``PoolManager.clear``: nothing to close."""

    def _serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: str | bytes | None) -> tuple[int, Obj | str]:
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if segments == ["apis"]:
            return 200, self._group_list()
        rest = segments[2:] if segments[0] == "api" else segments[3:]
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, resource, tail = rest[1], rest[2], rest[3:]
        else:
            namespace, resource, tail = None, rest[0], rest[1:]
        name = tail[0] if tail else None
        subresource = tail[1] if len(tail) > 1 else None
        if resource not in RESOURCES:
            raise Refusal(404, f"the server could not find the requested resource ({resource})")
        verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch",
                "DELETE": "delete", "PUT": "update"}[method]
        parsed = json.loads(body) if body else None
        self._inject(verb, resource, name or "", subresource)
        if verb == "list":
            return 200, self._list(resource, namespace, query)
        if verb == "get":
            assert name is not None
            return 200, self._get(resource, namespace, name, subresource, query)
        if verb == "create":
            result = self._create(resource, namespace, parsed)
            self._record(Write("create", resource, namespace, result["metadata"]["name"],
                               body=parsed, content_type=headers.get("Content-Type")))
            return 201, result
        assert name is not None
        if verb == "patch":
            key = self._key(resource, namespace, name)
            before = self.objects.get(key, {}).get("metadata", {}).get("resourceVersion")
            result = self._patch(resource, namespace, name, subresource, parsed,
                                 headers.get("Content-Type", ""))
            after = self.objects.get(key, {}).get("metadata", {}).get("resourceVersion")
            self._record(Write("patch", resource, namespace, name, subresource, parsed,
                               headers.get("Content-Type"), changed=after != before))
            return 200, result
        if verb == "delete":
            result = self._delete(resource, namespace, name, parsed)
            self._record(Write("delete", resource, namespace, name, body=parsed))
            return 200, result
        if verb == "update" and subresource is None:
            result = self._update(resource, namespace, name, parsed)
            self._record(Write("update", resource, namespace, name, body=parsed,
                               content_type=headers.get("Content-Type")))
            return 200, result
        raise Refusal(405, f"{verb} is not modelled")

    def _inject(self, verb: str, resource: str, name: str, subresource: str | None) -> None:
        for failure in self.failures:
            if failure.matches(verb, resource, name, subresource):
                if failure.times is not None:
                    failure.times -= 1
                raise Refusal(failure.status, failure.message)

    def _record(self, write: Write) -> None:
        self.writes.append(write)
        if self.crash_after is not None and len(self.writes) >= self.crash_after:
            raise Crash(f"crashed after write {len(self.writes)}: {write.what}")

    # --- verbs ---------------------------------------------------------------------

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str | None, str]:
        return resource, namespace if RESOURCES[resource][2] else None, name

    def _found(self, resource: str, namespace: str | None, name: str) -> Obj:
        obj = self.objects.get(self._key(resource, namespace, name))
        if obj is None:
            raise Refusal(404, f'{resource} "{name}" not found')
        return obj

    def _get(self, resource: str, namespace: str | None, name: str, subresource: str | None,
             query: dict[str, str]) -> Obj | str:
        obj = self._found(resource, namespace, name)
        if subresource is None or subresource == "status":
            return copy.deepcopy(obj)
        if subresource == "scale":
            return _scale(obj)
        if subresource == "log":
            previous = query.get("previous") == "true"
            text = self.logs.get((name, query.get("container", ""), "previous" if previous else ""))
            if text is None:
                raise Refusal(400, f"previous terminated container {query.get('container')} "
                                   f"in pod {name} not found" if previous else
                              f"container {query.get('container')} is not valid for pod {name}")
            lines = text.splitlines(keepends=True)
            if "tailLines" in query:
                lines = lines[-int(query["tailLines"]):]
            return "".join(lines)
        raise Refusal(404, f"subresource {subresource} is not modelled")

    def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> Obj:
        labels = _parse_selector(query.get("labelSelector", ""))
        fields = [tuple(p.split("=", 1)) for p in query.get("fieldSelector", "").split(",") if p]
        items = []
        for (r, ns, _), obj in sorted(self.objects.items()):
            if r != resource or namespace not in (None, ns):
                continue
            if not all(test(obj["metadata"].get("labels") or {}) for test in labels):
                continue
            if not all(str(_dig(obj, path)) == value for path, value in fields):
                continue
            item = copy.deepcopy(obj)
            item.pop("kind", None)  # list items carry no kind, as from the API server
            item.pop("apiVersion", None)
            items.append(item)
        api_version, kind, _ = RESOURCES[resource]
        return {"apiVersion": api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}

    def _create(self, resource: str, namespace: str | None, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        api_version, kind, namespaced = RESOURCES[resource]
        meta = obj.setdefault("metadata", {})
        if "name" not in meta:
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        if namespaced:
            meta["namespace"] = namespace
            if self.strict_namespaces and ("namespaces", None, namespace) not in self.objects:
                raise Refusal(404, f'namespaces "{namespace}" not found')
        key = self._key(resource, namespace, meta["name"])
        if key in self.objects:
            raise Refusal(409, f'{resource} "{meta["name"]}" already exists', "AlreadyExists")
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        if resource in CUSTOM:
            obj.pop("status", None)  # the status subresource: written only there
        if kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = _b64(v)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_timestamp(self.clock()),
                    generation=1, resourceVersion=str(next(self._versions)))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _patch(self, resource: str, namespace: str | None, name: str, subresource: str | None,
               patch: Any, content_type: str) -> Obj:
        if "json-patch" in content_type and subresource is None:
            obj = self._found(resource, namespace, name)
            return self._store(resource, obj, _json_patch(copy.deepcopy(obj), patch))
        if "merge-patch" not in content_type and "strategic-merge-patch" not in content_type:
            raise Refusal(415, f"{content_type} is not modelled")
        if "strategic" in content_type and _has_list(patch):
            raise Refusal(415, "strategic merge of lists is not modelled")
        obj = self._found(resource, namespace, name)
        meta = obj["metadata"]
        wanted = (patch.get("metadata") or {})
        if "resourceVersion" in wanted and wanted["resourceVersion"] != meta["resourceVersion"]:
            raise Refusal(409, f'Operation cannot be fulfilled on {resource} "{name}": the '
                               f"object has been modified; please apply your changes to the "
                               f"latest version and try again")
        if "uid" in wanted and wanted["uid"] != meta["uid"]:
            raise Refusal(422, f'{RESOURCES[resource][1]} "{name}" is invalid: metadata.uid: '
                               f"Invalid value: \"{wanted['uid']}\": field is immutable")
        if subresource == "scale":
            replicas = (patch.get("spec") or {}).get("replicas")
            if replicas is not None:
                updated = copy.deepcopy(obj)
                updated["spec"]["replicas"] = replicas
                self._store(resource, obj, updated)
            return _scale(self.objects[self._key(resource, namespace, name)])
        merged = _merge(copy.deepcopy(obj), copy.deepcopy(patch))
        for immutable in ("uid", "name", "namespace", "creationTimestamp", "generation",
                          "resourceVersion", "deletionTimestamp"):
            if immutable in meta:
                merged["metadata"][immutable] = meta[immutable]
        if subresource == "status":
            updated = copy.deepcopy(obj)
            updated["status"] = merged.get("status")
            if updated["status"] is None:
                updated.pop("status")
        elif subresource is None:
            updated = merged
            if "status" in obj:
                updated["status"] = copy.deepcopy(obj["status"])
            else:
                updated.pop("status", None)
        else:
            raise Refusal(404, f"subresource {subresource} is not modelled")
        return self._store(resource, obj, updated)

    def _update(self, resource: str, namespace: str | None, name: str, body: Obj) -> Obj:
        """A replace (PUT): the whole object; its resourceVersion, if given, must match."""
        obj = self._found(resource, namespace, name)
        meta = obj["metadata"]
        wanted = body.get("metadata") or {}
        if wanted.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise Refusal(409, f'Operation cannot be fulfilled on {resource} "{name}": the '
                               f"object has been modified; please apply your changes to the "
                               f"latest version and try again")
        updated = copy.deepcopy(body)
        for kept in ("uid", "name", "namespace", "creationTimestamp", "generation",
                     "resourceVersion", "deletionTimestamp"):
            if kept in meta:
                updated["metadata"][kept] = meta[kept]
        if "status" in obj:
            updated["status"] = copy.deepcopy(obj["status"])
        return self._store(resource, obj, updated)

    def _store(self, resource: str, before: Obj, after: Obj) -> Obj:
        meta = after["metadata"]
        if after == before:
            return copy.deepcopy(after)  # a no-op write: the resourceVersion stays
        changed = (
            {k: v for k, v in after.items() if k not in ("metadata", "status")}
            != {k: v for k, v in before.items() if k not in ("metadata", "status")}
            if resource in CUSTOM else after.get("spec") != before.get("spec"))
        if changed:
            meta["generation"] = before["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = str(next(self._versions))
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.objects[key]
        else:
            self.objects[key] = after
        return copy.deepcopy(after)

    def _delete(self, resource: str, namespace: str | None, name: str,
                options: Obj | None) -> Obj:
        obj = self._found(resource, namespace, name)
        uid = ((options or {}).get("preconditions") or {}).get("uid")
        if uid is not None and uid != obj["metadata"]["uid"]:
            raise Refusal(409, f"Precondition failed: UID in precondition: {uid}, UID in "
                               f"object meta: {obj['metadata']['uid']}")
        key = self._key(resource, namespace, name)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _timestamp(self.clock())
                obj["metadata"]["resourceVersion"] = str(next(self._versions))
            return copy.deepcopy(obj)
        del self.objects[key]
        return copy.deepcopy(obj)  # the API server answers with the deleted object

    def _group_list(self) -> Obj:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": group, "versions": [{"groupVersion": f"{group}/{version}",
                                          "version": version}],
             "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version}}
            for group, version in self.groups]}


# --- helpers ---------------------------------------------------------------------------


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _status(code: int, message: str, reason: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _scale(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)}}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _has_list(value: Any) -> bool:
    if isinstance(value, list):
        return True
    return isinstance(value, dict) and any(_has_list(v) for v in value.values())


def _json_patch(obj: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902 over plain objects: test, add, replace, remove (what the operator sends)."""
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].split("/")[1:]]
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.get(part)
            if target is None:
                raise Refusal(422, f"the path {op['path']} does not exist")
        if op["op"] == "test":
            if (target.get(last) if isinstance(target, dict) else None) != op["value"]:
                raise Refusal(422, f"the test operation on {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            target[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            target.pop(last, None)
        else:
            raise Refusal(415, f"the JSON Patch operation {op['op']} is not modelled")
    return obj


def _dig(obj: Obj, path: str) -> Any:
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    return current


_REQUIREMENT = re.compile(r"\s*(!?)([^\s!=,()]+)\s*(?:(==|=|!=)\s*([^\s,()]*)|\s+(in|notin)\s*\(([^)]*)\))?")


def _parse_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    """The ``labelSelector`` query syntax: ``k=v``, ``k!=v``, ``k``, ``!k``,
    ``k in (a,b)``, ``k notin (a,b)``."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    position = 0
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise Refusal(400, f"unable to parse requirement: {text[position:]!r}")
        negated, key, op, value, set_op, values = match.groups()
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise Refusal(400, f"unable to parse requirement: {text!r}")
            position += 1
        tests.append(_requirement(negated, key, op, value, set_op, values))
    return tests


def _requirement(negated: str, key: str, op: str | None, value: str | None,
                 set_op: str | None, values: str | None) -> Callable[[dict[str, str]], bool]:
    if negated:
        return lambda labels: key not in labels
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if set_op is not None:
        members: Iterable[str] = {v.strip() for v in (values or "").split(",")}
        if set_op == "in":
            return lambda labels: labels.get(key) in members
        return lambda labels: labels.get(key) not in members
    return lambda labels: key in labels
