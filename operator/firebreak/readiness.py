"""A playbook's Ready condition: whether it is valid and so takes part in matching.

The CRD refuses most invalid playbooks at apply time; what gets through (a playbook
stored before its CRD was tightened, or one this release reads differently) is left
out of matching, so that it never shadows a valid one, and says so on itself: a
``Ready=False`` condition with the reason, shown by ``kubectl get rpb``, and a Warning
Event when it becomes invalid. The status is written only when it changes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import conditions as c
from .api import (
    API_VERSION,
    PLAYBOOK_PLURAL,
    ConditionStatus,
    ResponsePlaybookSpec,
    ResponsePlaybookStatus,
)
from .kube import Kube, path

log = logging.getLogger(__name__)

READY = "Ready"
VALID = "Valid"
INVALID_PLAYBOOK = c.INVALID_PLAYBOOK
PlaybookEventSink = Callable[[dict[str, Any], str, str, str, dt.datetime], None]


def problem_of(spec: dict[str, Any]) -> str | None:
    """Why the playbook's spec is invalid, as one line; None when it is valid."""
    try:
        ResponsePlaybookSpec.model_validate(spec)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
                         for e in exc.errors()[:5])
    return None


@dataclass
class PlaybookReadiness:
    kube: Kube
    emit: PlaybookEventSink
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def observe(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        generation = meta.get("generation")
        problem = problem_of(body.get("spec") or {})
        status, reason, message = (
            (ConditionStatus.true, VALID, "the playbook is valid and answers incidents")
            if problem is None else
            (ConditionStatus.false, INVALID_PLAYBOOK,
             f"left out of matching until fixed: {problem}"))
        try:
            current = ResponsePlaybookStatus.model_validate(body.get("status") or {})
        except ValidationError:
            current = ResponsePlaybookStatus()
        was = c.find(current.conditions, READY)
        if (was is not None and (was.status, was.reason, was.message) == (status, reason, message)
                and current.observed_generation == generation):
            return
        now = self.clock()
        updated = ResponsePlaybookStatus(
            observed_generation=generation,
            conditions=c.set_condition(current.conditions, READY, status, reason, message,
                                       now=now, generation=generation))
        self.kube.request("PATCH", path(API_VERSION, PLAYBOOK_PLURAL,
                                        meta["namespace"], meta["name"], "status"),
                          {"status": updated.to_api()})
        if problem is not None and (was is None or was.status is not ConditionStatus.false
                                    or was.message != message):
            log.warning("ResponsePlaybook %s/%s is invalid: %s", meta["namespace"], meta["name"],
                        problem)
            self.emit(body, "Warning", INVALID_PLAYBOOK, message, now)
