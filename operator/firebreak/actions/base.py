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
"""

from __future__ import annotations

import datetime as dt
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..api import ActionName, ObjectReference, Target
from ..config import OperatorConfig
from ..kube import Kube

MANAGED_BY = {"app.kubernetes.io/managed-by": "firebreak"}
INCIDENT_LABEL = "firebreak.dev/incident"
INCIDENT_NAMESPACE_LABEL = "firebreak.dev/incident-namespace"


class Params(BaseModel):
    """Base of action parameters: unknown parameters are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoParams(Params):
    pass


class ActionRefused(Exception):
    """The step cannot be done for this target (a permanent, explained refusal)."""


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

    def managed_labels(self) -> dict[str, str]:
        return {**MANAGED_BY, INCIDENT_LABEL: self.incident.key,
                INCIDENT_NAMESPACE_LABEL: self.incident.namespace}


@dataclass(frozen=True)
class Prepared:
    """What a step will do: the objects, the record kept in status, and facts that
    guardrails judge (such as how many schedulable nodes would remain)."""

    message: str
    objects: list[ObjectReference]
    record: dict[str, Any]
    facts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Applied:
    message: str
    # The record to keep for revert; None when the step cannot be undone.
    record: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


class Action(ABC):
    name: ClassVar[ActionName]
    params_model: ClassVar[type[Params]] = NoParams
    revertible: ClassVar[bool] = True

    def parse(self, params: dict[str, Any] | None) -> Params:
        return self.params_model.model_validate(params or {})

    @abstractmethod
    def prepare(self, ctx: ActionContext, params: Any) -> Prepared:
        """Read the world; decide what to touch. Writes nothing."""

    @abstractmethod
    def apply(self, ctx: ActionContext, params: Any, record: dict[str, Any]) -> Applied:
        """Do what ``prepare`` decided. Idempotent. ``ActionRefused`` is raised only
        before anything was changed; after a change, errors propagate as they are."""

    def revert(self, ctx: ActionContext, record: dict[str, Any]) -> str:
        """Undo the step from its record. Idempotent."""
        raise ActionRefused(f"{self.name} cannot be reverted")


def ref(kind: str, name: str, namespace: str | None = None) -> ObjectReference:
    return ObjectReference(kind=kind, name=name, namespace=namespace)
