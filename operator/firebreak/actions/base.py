"""What every action is: prepare (read only), apply (idempotent), revert (from a record).

The engine runs a step in three moves so that a crash at any point is harmless:

1. ``prepare`` reads the world and decides exactly what the step will touch and
   what it must remember to undo it (say, a Deployment's replica count *before*
   the scale-down). Nothing is written. Dry runs stop here and show ``message``.
2. The engine records that decision in the incident's status (state ``Running``).
3. ``apply`` performs it from the recorded decision. Applying twice changes
   nothing; after a restart the engine applies the recorded decision again
   rather than preparing a new one, so a second scale-down cannot mistake 0 for
   the previous count.

``revert`` undoes a step from the record alone. Actions are the only code that
changes workloads.

Each action's record is a pydantic model (a ``Record``), kept in the incident's
status as JSON and validated when read back. Records outlive releases: a record
written by an older release must still apply and revert. Fields are therefore only
ever added with defaults, never renamed or removed; ``version`` (absent in the
records of release 0.1.0, which load as version 1) is raised when a change needs
the reader to tell formats apart, and a record from a newer release is refused
with a message rather than misread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from ..api import ActionName, EvidenceStored, ObjectReference, SecurityIncidentSpec, Target
from ..config import OperatorConfig
from ..isolation import PolicySet
from ..kube import Kube

MANAGED_BY = {"app.kubernetes.io/managed-by": "firebreak"}
INCIDENT_LABEL = "firebreak.dev/incident"
INCIDENT_NAMESPACE_LABEL = "firebreak.dev/incident-namespace"


class Params(BaseModel):
    """Base of action parameters: unknown parameters are an error, not a silent no-op, and
    nothing is coerced (``"no"`` is not false, ``"3"`` is not 3)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class NoParams(Params):
    pass


class ActionRefused(Exception):
    """The step cannot be done for this target (a permanent, explained refusal)."""


RECORD_VERSION = 1


class RecordPart(BaseModel):
    """Part of a record: camelCase on the wire like the rest of the API; unknown fields
    are an error, so a misspelt or foreign record is never half understood."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class Record(RecordPart):
    """What a step keeps in status to apply (again, after a restart) and to undo itself."""

    version: int = Field(default=1, ge=1, description="Format of the record; absent means 1.")

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > RECORD_VERSION:
            raise ValueError(f"written by a newer release (format {version}; this release "
                             f"reads up to {RECORD_VERSION})")
        return version

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class RecordUnreadable(ActionRefused):
    """The record kept in status does not validate as this action's record."""


@dataclass(frozen=True)
class IncidentRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        """An identity that fits a label name (<= 63 chars), used in the names and
        labels of what the incident creates: the name itself when it fits."""
        if len(self.name) <= 63:
            return self.name
        digest = hashlib.sha256(f"{self.namespace}/{self.name}".encode()).hexdigest()[:10]
        return f"{self.name[:52].rstrip('-.')}-{digest}"


@dataclass(frozen=True)
class ActionContext:
    kube: Kube
    config: OperatorConfig
    incident: IncidentRef
    target: Target
    step: str
    labels: dict[str, str]
    now: dt.datetime
    # What a step that speaks about the incident (notify) says: its spec and playbook.
    incident_spec: SecurityIncidentSpec | None = None
    playbook: str = ""
    # What ``prepare`` read, for the ``apply`` that follows it in the same run (a few
    # milliseconds later, after the decision is recorded): apply takes it out (it
    # serves once) and reads again only what is not here. Empty when apply resumes a
    # decision recorded by an earlier run.
    seen: dict[str, Any] = field(default_factory=dict)
    # The namespace's NetworkPolicies as the operator's watch has them (views.py);
    # None, or an answer of None, means: list them from the API server.
    policies: Callable[[str], PolicySet | None] | None = None
    # A check's pods, by namespace, listed a moment ago for every quarantine there (one
    # listing rather than one per quarantine); a namespace not here is read as usual.
    listed_pods: Mapping[str, list[dict[str, Any]]] | None = None

    def managed_labels(self) -> dict[str, str]:
        return {**MANAGED_BY, INCIDENT_LABEL: self.incident.key,
                INCIDENT_NAMESPACE_LABEL: self.incident.namespace}


@dataclass(frozen=True)
class Prepared:
    """What a step will do: the objects, the record kept in status, and facts that
    guardrails judge (such as how many schedulable nodes would remain)."""

    message: str
    objects: list[ObjectReference]
    record: Record
    facts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Whether this decision may go unrecorded until its outcome is: applying the step
    # again from a fresh plan, after a crash that lost the decision, writes nothing
    # new and ends with the same record (its objects are named after the incident
    # and known as its own; what a revert needs is in the world, not only in the
    # decision). Saves the status write before the step on the common path.
    replayable: bool = False


@dataclass(frozen=True)
class Verdict:
    """Whether what a step set up holds, checked against the world as it is now
    (a quarantine: no traffic beyond its allowances), and why."""

    holds: bool
    message: str


@dataclass(frozen=True)
class Applied:
    message: str
    # The record to keep for revert; None when the step cannot be undone.
    record: Record | None
    warnings: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    # Evidence written, with the SHA-256 of every item (snapshot), kept in status.
    evidence: list[EvidenceStored] = field(default_factory=list)


@dataclass(frozen=True)
class Held:
    """One pass of keeping an applied step in force: the record (it may have grown,
    say with pods created since), what had to be put back, and the verdict."""

    record: Record
    changes: list[str]
    verdict: Verdict


class Action(ABC):
    name: ClassVar[ActionName]
    params_model: ClassVar[type[Params]] = NoParams
    record_model: ClassVar[type[Record]]
    revertible: ClassVar[bool] = True
    # Whether ``hold`` does anything: what others may undo is put back while it applies.
    held: ClassVar[bool] = False
    # False for steps that change nothing about the target (notify): the guardrails on
    # targets do not apply to them.
    acts_on_target: ClassVar[bool] = True

    def parse(self, params: dict[str, Any] | None) -> Params:
        return self.params_model.model_validate(params or {})

    def load(self, record: dict[str, Any] | None) -> Record:
        """The record kept in status, validated as this action's record."""
        try:
            return self.record_model.model_validate(record or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()[:5])
            raise RecordUnreadable(f"the {self.name.value} record in status is unreadable: "
                                   f"{problems}") from exc

    @abstractmethod
    def prepare(self, ctx: ActionContext, params: Any) -> Prepared:
        """Read the world; decide what to touch. Writes nothing."""

    @abstractmethod
    def apply(self, ctx: ActionContext, params: Any, record: Any) -> Applied:
        """Do what ``prepare`` decided. Idempotent. ``ActionRefused`` is raised only
        before anything was changed; after a change, errors propagate as they are."""

    def hold(self, ctx: ActionContext, params: Any, record: Any) -> Held | None:
        """Put back what others undid since ``apply`` and judge whether the step still
        holds; None for steps that need no holding."""
        return None

    def revert(self, ctx: ActionContext, record: Any) -> str:
        """Undo the step from its record. Idempotent."""
        raise ActionRefused(f"{self.name} cannot be reverted")


def ref(kind: str, name: str, namespace: str | None = None) -> ObjectReference:
    return ObjectReference(kind=kind, name=name, namespace=namespace)
