"""Kopf registrations. Each handler is a one-line delegation to the engine.

The operator owns its persistence keys: its finalizer and Kopf's progress and
diff-base annotations live under ``firebreak.dev``, set at start-up.

What the handlers use is built once at start-up into one typed ``Services`` object,
kept in Kopf's memo under one key and read back through ``services(memo)``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from .actions import registry
from .actions.network import OWNER_ANNOTATION
from .api import (
    FINALIZER,
    GROUP,
    INCIDENT_PLURAL,
    PLAYBOOK_PLURAL,
    VERSION,
    ActionName,
    ResponsePlaybookSpec,
    StepState,
)
from .config import OperatorConfig
from .engine import Engine, RetryLater
from .events import EventPoster
from .intake import Intake
from .kube import Kube
from .matching import PlaybookCandidate
from .pollers import PrometheusPoller
from .readiness import PlaybookReadiness
from .sources.signal import Signal
from .sources.trivy import (
    TrivyThresholds,
    signal_from_config_audit_report,
    signal_from_exposed_secret_report,
    signal_from_vulnerability_report,
)
from .webhook import TokenSource, Webhook, describe_auth

ALL = None  # the playbook index keeps every playbook under one key
# Kopf fixes a timer's interval when the module is imported; the configured interval
# is read before the handlers are (cli.py), through this variable.
HOLD_INTERVAL = float(os.environ.get("FIREBREAK_HOLD_INTERVAL") or 30.0) or 3600.0
SERVICES = "services"


@dataclass(frozen=True)
class Services:
    """Everything the handlers delegate to, built once at start-up."""

    config: OperatorConfig
    engine: Engine
    intake: Intake
    events: EventPoster
    trivy: TrivyThresholds
    readiness: PlaybookReadiness
    webhook: Webhook | None = None
    poller: asyncio.Task[None] | None = None


def services(memo: kopf.Memo) -> Services:
    """The operator's services, as the start-up handler stored them."""
    found = memo.get(SERVICES)
    if not isinstance(found, Services):
        raise RuntimeError("the operator's services are not set up: the start-up handler "
                           "did not run")
    return found


def _config(memo: kopf.Memo) -> OperatorConfig:
    """The configuration ``firebreak run`` put in the memo."""
    config = memo.get("config")
    if not isinstance(config, OperatorConfig):
        raise RuntimeError("no OperatorConfig in the memo: start the operator with "
                           "`firebreak run`")
    return config


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events tell the story
    settings.execution.max_workers = 16
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.batching.batch_window = 0.01  # react to a new incident at once
    config = _config(memo)
    kubeconfig = memo.get("kubeconfig")
    kube = Kube.from_environment(kubeconfig if isinstance(kubeconfig, str) else None)
    events = EventPoster(kube)
    intake = Intake(kube, config)
    webhook = None
    if config.webhook_address:
        tokens = TokenSource(config, kube)
        problem = describe_auth(config, tokens)
        if problem is not None:
            logging.getLogger(__name__).warning("alert webhook disabled: %s", problem)
        else:
            webhook = Webhook(config, intake, tokens)
            await webhook.start()
    poller = None
    if config.prometheus_url:
        poller = asyncio.create_task(PrometheusPoller(config, intake).run())
    memo[SERVICES] = Services(
        config=config,
        engine=Engine(kube=kube, config=config, actions=registry(), emit=events),
        intake=intake,
        events=events,
        trivy=TrivyThresholds(min_severity=config.trivy_min_severity,
                              require_fix=config.trivy_require_fix,
                              min_count=config.trivy_min_count,
                              secret_min_severity=config.trivy_secret_min_severity,
                              config_min_severity=config.trivy_config_min_severity),
        readiness=PlaybookReadiness(kube=kube, emit=events),
        webhook=webhook,
        poller=poller,
    )


@kopf.on.cleanup()
async def stop_intake(memo: kopf.Memo, **_: Any) -> None:
    found = services(memo)
    if found.webhook is not None:
        await found.webhook.stop()
    if found.poller is not None:
        found.poller.cancel()
    found.events.close()


TrivyReader = Callable[[Mapping[str, Any], TrivyThresholds], Signal | None]


def _trivy_report(kind: str, read: TrivyReader, type: str | None, body: kopf.Body,
                  memo: kopf.Memo,
                  logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """A Trivy Operator report: the same workload and findings always name the same
    incident, so a report re-created on its TTL opens nothing new."""
    if type == "DELETED":
        return
    try:
        signal = read(dict(body), services(memo).trivy)
    except ValidationError as exc:
        logger.warning("%s %s/%s is malformed and ignored: %s", kind,
                       body.get("metadata", {}).get("namespace"),
                       body.get("metadata", {}).get("name"), exc)
        return
    if signal is not None:
        recorded = services(memo).intake.record(signal)
        logger.info("%s: incident %s/%s %s", kind, recorded.namespace, recorded.name,
                    recorded.outcome)


@kopf.on.event("aquasecurity.github.io", "v1alpha1", "vulnerabilityreports")
def vulnerability_report(type: str | None, body: kopf.Body, memo: kopf.Memo,
                         logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    _trivy_report("VulnerabilityReport", signal_from_vulnerability_report, type, body, memo,
                  logger)


@kopf.on.event("aquasecurity.github.io", "v1alpha1", "exposedsecretreports")
def exposed_secret_report(type: str | None, body: kopf.Body, memo: kopf.Memo,
                          logger: logging.Logger | logging.LoggerAdapter[Any],
                          **_: Any) -> None:
    _trivy_report("ExposedSecretReport", signal_from_exposed_secret_report, type, body, memo,
                  logger)


@kopf.on.event("aquasecurity.github.io", "v1alpha1", "configauditreports")
def config_audit_report(type: str | None, body: kopf.Body, memo: kopf.Memo,
                        logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    _trivy_report("ConfigAuditReport", signal_from_config_audit_report, type, body, memo,
                  logger)


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


@kopf.on.event(GROUP, VERSION, PLAYBOOK_PLURAL)
def playbook_ready(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every playbook says whether it is valid (its Ready condition); writes nothing to
    the playbook but its status, and only when that changes."""
    if type != "DELETED":
        services(memo).readiness.observe(_plain(body))


@kopf.on.resume(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
@kopf.on.create(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
@kopf.on.update(GROUP, VERSION, INCIDENT_PLURAL, field="spec", backoff=5)
def reconcile(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
              playbooks: kopf.Index[Any, Any] | None = None, **_: Any) -> None:
    assert namespace is not None and playbooks is not None  # Kopf passes the index by name
    try:
        services(memo).engine.reconcile(namespace, name, list(playbooks.get(ALL, [])),
                                        body=_plain(body))
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


def _plain(body: kopf.Body) -> dict[str, Any]:
    """Kopf's live view of an object, as a plain dict the engine may keep."""
    return {key: copy.deepcopy(value) for key, value in body.items()}


@dataclass(frozen=True)
class HeldQuarantine:
    """An incident holding a quarantine in some namespace, and its own policy there."""

    namespace: str
    name: str
    uid: str
    policy: str


def _quarantines(body: kopf.Body) -> dict[str, HeldQuarantine]:
    """The namespaces where an incident holds a quarantine (applied, not resolved)."""
    if (body.get("spec") or {}).get("resolution"):
        return {}
    meta = body["metadata"]
    held = {}
    for step in (body.get("status") or {}).get("actions") or []:
        record = step.get("revert") or {}
        if step.get("action") == ActionName.isolate_network.value \
                and step.get("state") == StepState.applied.value and record.get("namespace"):
            held[record["namespace"]] = HeldQuarantine(
                meta["namespace"], meta["name"], meta.get("uid", ""), record.get("policy", ""))
    return held


@kopf.index(GROUP, VERSION, INCIDENT_PLURAL)
def quarantines(body: kopf.Body, **_: Any) -> dict[str, HeldQuarantine]:
    return _quarantines(body)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
def network_policy(type: str | None, body: kopf.Body, memo: kopf.Memo,
                   logger: logging.Logger | logging.LoggerAdapter[Any],
                   quarantines: kopf.Index[str, HeldQuarantine] | None = None, **_: Any) -> None:
    """A policy in a namespace holding a quarantine appeared, changed or went: each
    incident there puts its quarantine back and judges it again, at once."""
    assert quarantines is not None
    meta = body.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    for held in quarantines.get(str(meta.get("namespace")), []):
        if type in (None, "ADDED") and meta.get("name") == held.policy and owner == held.uid:
            continue  # its own policy, as it made it
        try:
            services(memo).engine.hold(held.namespace, held.name)
        except RetryLater as exc:  # the periodic check tries again
            logger.warning("quarantine of %s/%s not checked: %s", held.namespace, held.name, exc)


def _holds_quarantine(body: kopf.Body, **_: Any) -> bool:
    return bool(_quarantines(body))


@kopf.timer(GROUP, VERSION, INCIDENT_PLURAL, interval=HOLD_INTERVAL, initial_delay=HOLD_INTERVAL,
            when=_holds_quarantine)
def hold_quarantine(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
                    **_: Any) -> None:
    """Pods change without a NetworkPolicy event (a label removed, a workload's new pod):
    checked every interval."""
    assert namespace is not None
    found = services(memo)
    if found.config.hold_interval <= 0:
        return
    try:
        found.engine.hold(namespace, name, body=_plain(body))
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.delete(GROUP, VERSION, INCIDENT_PLURAL, backoff=5)
def release(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
            **_: Any) -> None:
    assert namespace is not None
    try:
        services(memo).engine.release(namespace, name, dict(body))
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
