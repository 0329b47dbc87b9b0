"""Kopf registrations. Kopf watches; the handlers hand what they see to the
controller (``controller.py``), whose workers move incidents on.

Incidents are followed with event handlers only: Kopf keeps no state on them (no
progress or diff-base annotations, no finalizer of its own), so the API writes per
incident are the engine's and intake's alone.

What the handlers use is built once at start-up into one typed ``Services`` object,
kept in Kopf's memo under one key and read back through ``services(memo)``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from . import __version__, metrics
from .actions import registry
from .actions.network import OWNER_ANNOTATION
from .api import (
    GROUP,
    INCIDENT_PLURAL,
    PLAYBOOK_PLURAL,
    VERSION,
    ResponsePlaybookSpec,
)
from .budget import Budget
from .config import OperatorConfig
from .controller import INCIDENT, PLAYBOOK, Controller, HeldQuarantine, quarantine_index
from .engine import Engine
from .events import EventPoster
from .intake import Intake
from .isolation import adds_nothing
from .kube import Kube, without_managed_fields
from .leader import Elector
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
from .views import PolicyView
from .webhook import TokenSource, Webhook, describe_auth

ALL = None  # the playbook index keeps every playbook under one key
OWN_POLICY_CHECK_SECONDS = 1.0
SERVICES = "services"


@dataclass(frozen=True)
class Services:
    """Everything the handlers delegate to, built once at start-up."""

    config: OperatorConfig
    engine: Engine
    controller: Controller
    intake: Intake
    events: EventPoster
    trivy: TrivyThresholds
    policies: PolicyView | None = None  # the NetworkPolicies the watch delivered
    running: asyncio.Task[None] | None = None  # the controller's workers
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


class NoChangeDetection(kopf.DiffBaseStorage):
    """Kopf's change detection, switched off. Kopf deep-copies every object it is told
    of to work out what changed since it last handled it, for change handlers (create,
    update, field) and daemons; the operator has neither, only event handlers and
    indexes, so the copy (the cost of every watch event) would serve nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The incident's own finalizer is the engine's (engine.py); Kopf's must differ, or
    # Kopf would take ours off, having no deletion handler of its own.
    settings.persistence.finalizer = f"{GROUP}/kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoChangeDetection()
    settings.posting.level = logging.WARNING  # our own Events tell the story
    settings.execution.max_workers = 16
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.batching.batch_window = 0.01  # react to a new incident at once
    config = _config(memo)
    kubeconfig = memo.get("kubeconfig")
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"
    kube = Kube.from_environment(kubeconfig if isinstance(kubeconfig, str) else None,
                                 agent=f"firebreak/{__version__} ({identity})")
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
    policies = PolicyView()
    engine = Engine(kube=kube, config=config, actions=registry(), emit=events,
                    budget=Budget(config.budget_per_minute), policies=policies.in_namespace)
    elector = None
    if config.lease_seconds > 0:
        elector = Elector(kube, config.namespace, identity, config.lease_seconds)
    controller = Controller(engine, PlaybookReadiness(kube=kube, emit=events), elector,
                            workers=config.workers, hold_interval=config.hold_interval)
    if webhook is not None:
        webhook.on_created = controller.created
    metrics.queue_depth("reconcile", controller.queue.depth)
    memo[SERVICES] = Services(
        config=config,
        engine=engine,
        controller=controller,
        intake=intake,
        events=events,
        policies=policies,
        trivy=TrivyThresholds(min_severity=config.trivy_min_severity,
                              require_fix=config.trivy_require_fix,
                              min_count=config.trivy_min_count,
                              secret_min_severity=config.trivy_secret_min_severity,
                              config_min_severity=config.trivy_config_min_severity),
        running=asyncio.create_task(controller.run()),
        webhook=webhook,
        poller=poller,
    )


@kopf.on.cleanup()
async def stop_intake(memo: kopf.Memo, **_: Any) -> None:
    found = services(memo)
    if found.running is not None:
        found.running.cancel()
    # Steps in hand finish, then the Lease is given up: another replica takes over
    # at once rather than after the Lease expires.
    await asyncio.get_running_loop().run_in_executor(None, found.controller.stop)
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
async def playbook(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every playbook says whether it is valid (its Ready condition), written by the
    replica that acts."""
    services(memo).controller.observe(PLAYBOOK, type, _plain(body))


@kopf.on.event(GROUP, VERSION, INCIDENT_PLURAL)
async def incident(type: str | None, body: kopf.Body, memo: kopf.Memo,
                   playbooks: kopf.Index[Any, Any] | None = None, **_: Any) -> None:
    """Every change of an incident queues it; the acting replica's workers move it on.
    Kopf calls this only once the playbook index is complete, so no incident is
    matched against half the playbooks."""
    assert playbooks is not None  # Kopf passes the index by name
    found = services(memo)
    controller = found.controller
    if found.policies is not None:
        # Kopf calls this only once every index (the policies' too) has its first
        # listing: the view of the policies is complete from now on.
        found.policies.mark_synced()
    index = playbooks
    controller.playbooks = lambda: list(index.get(ALL, []))
    controller.indexed = True
    controller.observe(INCIDENT, type, _plain(body))
    # The incident gauges: from the watch, so every replica counts every incident.
    metrics.INCIDENTS.observe(type, body)


def _within_own(view: PolicyView | None, namespace: str, own: str, policy: kopf.Body) -> bool:
    """Whether ``policy`` allows nothing beyond what the quarantine policy ``own``
    allows (as the watch has it; False when it has not seen it)."""
    mine = view.get(namespace, own) if view is not None else None
    return mine is not None and adds_nothing(dict(policy), mine)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """Kopf's live view of an object, as a plain dict the engine may keep (without the
    managedFields the controller would drop: not copied to be thrown away)."""
    return copy.deepcopy(without_managed_fields(dict(body)))


# Indexes are asynchronous: Kopf would run a plain function in a thread, a hop that
# costs more than the function.
@kopf.index(GROUP, VERSION, INCIDENT_PLURAL)
async def quarantines(body: kopf.Body, **_: Any) -> dict[Any, HeldQuarantine]:
    """The incidents holding a quarantine: by namespace, and by (namespace, pod uid)."""
    return quarantine_index(dict(body))


@kopf.index("networking.k8s.io", "v1", "networkpolicies")
async def policy_view(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every policy the watch delivers goes into the operator's view of them
    (views.py); as an index, its first listing is complete before any incident is
    handled. Nothing is kept in Kopf's own index."""
    found = services(memo).policies
    if found is not None:
        found.upsert(body)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
async def network_policy(type: str | None, body: kopf.Body, memo: kopf.Memo,
                         quarantines: kopf.Index[Any, HeldQuarantine] | None = None,
                         **_: Any) -> None:
    """A policy in a namespace holding a quarantine appeared, changed or went: each
    incident there puts its quarantine back and judges it again, at once."""
    assert quarantines is not None
    meta = body.get("metadata") or {}
    view = services(memo).policies
    if view is not None and type == "DELETED":  # the index sees every other change
        view.remove(str(meta.get("namespace")), str(meta.get("name")))
    owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    controller = services(memo).controller
    namespace = str(meta.get("namespace"))
    theirs = controller.quarantined_by(dict(body)) if owner else None
    # An incident's quarantine policy can open only the pods it quarantines: only its
    # own incident and the quarantines of those pods are asked (found by pod, not by
    # trying every quarantine of the namespace).
    candidates = list(quarantines.get(namespace, [])) if theirs is None else list({
        (h.namespace, h.name): h for h in itertools.chain(
            quarantines.get(("policy", namespace, meta.get("name")), []),
            *(quarantines.get(("pod", namespace, uid), []) for uid in sorted(theirs)))
    }.values())
    for held in candidates:
        if meta.get("name") == held.policy and owner == held.uid:
            if type in (None, "ADDED"):
                continue  # its own policy, as it made it
        elif owner and not controller.shares_pods(held, namespace, theirs):
            continue  # another incident's quarantine, of pods this one does not hold
        elif owner and _within_own(view, namespace, held.policy, body):
            continue  # another quarantine of the same pod, allowing no more than its own
        # Another incident's quarantine policy over a pod both hold (a burst of alerts
        # about one pod makes one per incident): checked within a second, once for the
        # burst. Anyone else's policy, or its own changed: at once.
        controller.want_hold(held.namespace, held.name,
                             after=OWN_POLICY_CHECK_SECONDS if owner and owner != held.uid
                             else 0.0)
