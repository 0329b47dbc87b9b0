"""Kopf registrations. Each handler is a one-line delegation to the engine.

The operator owns its persistence keys: its finalizer and Kopf's progress and
diff-base annotations live under ``firebreak.dev``, set at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from .actions import registry
from .api import GROUP, INCIDENT_PLURAL, PLAYBOOK_PLURAL, VERSION, ResponsePlaybookSpec
from .config import OperatorConfig
from .engine import Engine, RetryLater
from .events import post_event
from .kube import Kube
from .matching import PlaybookCandidate

ALL = None  # the playbook index keeps every playbook under one key


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events tell the story
    settings.execution.max_workers = 32
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    config: OperatorConfig = memo["config"]
    kube = Kube.from_environment(memo.get("kubeconfig"))
    memo["engine"] = Engine(
        kube=kube, config=config, actions=registry(),
        emit=lambda body, type_, reason, message, now: post_event(
            kube, body, type_, reason, message, now),
    )


@kopf.index(GROUP, VERSION, PLAYBOOK_PLURAL)
def playbooks(namespace: str | None, name: str, spec: kopf.Spec,
              logger: logging.Logger | logging.LoggerAdapter[Any],
              **_: Any) -> dict[None, PlaybookCandidate] | None:
    assert namespace is not None  # ResponsePlaybook is namespaced
    try:
        parsed = ResponsePlaybookSpec.model_validate(dict(spec))
    except ValidationError as exc:
        logger.warning("ResponsePlaybook %s/%s is invalid and ignored: %s", namespace, name, exc)
        return None
    return {ALL: PlaybookCandidate(namespace=namespace, name=name, spec=parsed)}


@kopf.on.resume(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
@kopf.on.create(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
@kopf.on.update(GROUP, VERSION, INCIDENT_PLURAL, field="spec", backoff=5)
def reconcile(namespace: str | None, name: str, memo: kopf.Memo,
              playbooks: kopf.Index[Any, Any] | None = None, **_: Any) -> None:
    assert namespace is not None and playbooks is not None  # Kopf passes the index by name
    try:
        memo["engine"].reconcile(namespace, name, list(playbooks.get(ALL, [])))
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.delete(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
def release(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
            **_: Any) -> None:
    assert namespace is not None
    try:
        memo["engine"].release(namespace, name, dict(body))
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
