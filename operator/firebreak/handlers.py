"""What the operator follows, and where it goes. The operator's own resources
(incidents, playbooks) and the NetworkPolicies are followed by its own watches
(``watch.py``), which hand each event to the functions here; Kopf runs the operator's
start-up and clean-up, the Trivy Operator's reports, and the liveness probe.

Incidents, playbooks and policies are not Kopf's: its machinery for one watch event
cost more CPU than the engine's work on the incident, and each incident fans out
four. Kopf keeps no state on incidents (no annotations, no finalizer of its own), so
the API writes per incident are the engine's and intake's alone.

What the handlers use is built once at start-up into one typed ``Services`` object,
kept in Kopf's memo under one key and read back through ``services(memo)``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import kopf
from pydantic import ValidationError

from . import __version__, metrics
from .actions import registry
from .actions.network import NETWORKING, OWNER_ANNOTATION
from .api import (
    API_VERSION,
    GROUP,
    INCIDENT_PLURAL,
    PLAYBOOK_PLURAL,
    ResponsePlaybookSpec,
)
from .budget import Budget
from .config import OperatorConfig
from .controller import INCIDENT, PLAYBOOK, Controller, HeldQuarantine
from .engine import Engine
from .events import EventPoster
from .intake import Intake
from .isolation import adds_nothing
from .kube import Kube, path
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
from .watch import Watch
from .webhook import TokenSource, Webhook, describe_auth

log = logging.getLogger(__name__)
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
    watching: asyncio.Task[None] | None = None  # the watches (``follow``)
    # The valid playbooks, by (namespace, name), as the watch delivered them.
    playbooks: dict[tuple[str, str], PlaybookCandidate] = field(default_factory=dict)
    # Namespaces whose policies changed before the incidents were listed (``follow``).
    unsettled: set[str] = field(default_factory=set)


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
    # Kopf's finalizer must never be the engine's (engine.py), whatever Kopf watches.
    settings.persistence.finalizer = f"{GROUP}/kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoChangeDetection()
    settings.posting.level = logging.WARNING  # our own Events tell the story
    settings.execution.max_workers = 16
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
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
            log.warning("alert webhook disabled: %s", problem)
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
    found = memo[SERVICES] = Services(
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
        watching=asyncio.create_task(follow(kube, memo)),
    )
    wire(found)


def wire(found: Services) -> None:
    """Matching reads the playbooks the watch delivered."""
    catalogue = found.playbooks
    found.controller.playbooks = lambda: list(catalogue.values())


def incidents_listed(found: Services) -> None:
    """The first listing of incidents is delivered (after the playbooks' and the
    policies'): intake may hand its new incidents over at once from now on, and a
    policy that changed meanwhile, when there was no quarantine to check yet, has the
    quarantines of its namespace checked now."""
    controller = found.controller
    controller.indexed = True
    for namespace in sorted(found.unsettled):
        for held in controller.quarantines.get(namespace):
            controller.want_hold(held.namespace, held.name)
    found.unsettled.clear()


async def follow(kube: Kube, memo: kopf.Memo) -> None:
    """Watch playbooks and policies; once both are listed, incidents, so that no
    incident is matched against half the playbooks or judged on half the policies."""
    found = services(memo)
    playbook_watch = Watch(kube, path(API_VERSION, PLAYBOOK_PLURAL),
                           partial(playbook, memo=memo), kind="ResponsePlaybook",
                           api_version=API_VERSION)
    policy_watch = Watch(kube, path(NETWORKING, "networkpolicies"),
                         partial(network_policy, memo=memo), kind="NetworkPolicy",
                         api_version=NETWORKING)
    incident_watch = Watch(kube, path(API_VERSION, INCIDENT_PLURAL),
                           partial(incident, memo=memo), kind="SecurityIncident",
                           api_version=API_VERSION)
    tasks = [asyncio.create_task(w.run()) for w in (playbook_watch, policy_watch)]
    try:
        await playbook_watch.synced.wait()
        await policy_watch.synced.wait()
        if found.policies is not None:
            found.policies.mark_synced()
        tasks.append(asyncio.create_task(incident_watch.run()))
        await incident_watch.synced.wait()
        incidents_listed(found)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


@kopf.on.probe(id="watching", errors=kopf.ErrorsMode.PERMANENT)
def watching(memo: kopf.Memo, **_: Any) -> bool:
    """For the liveness probe: the watches still run (they retry every failure; one
    that ended has failed for good, and the replica should be restarted)."""
    task = services(memo).watching
    if task is not None and task.done():
        raise kopf.PermanentError("the watches of incidents, playbooks and policies stopped")
    return True


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
    if found.watching is not None:
        found.watching.cancel()
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


def candidate(body: Mapping[str, Any],
              logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> PlaybookCandidate | None:
    """A playbook as matching uses it; None (logged) when its spec is invalid (its Ready
    condition says why: readiness.py)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    try:
        parsed = ResponsePlaybookSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        logger.warning("ResponsePlaybook %s/%s is invalid and ignored: %s", namespace, name, exc)
        return None
    return PlaybookCandidate(namespace=namespace, name=name, spec=parsed)


async def playbook(type: str | None, body: dict[str, Any], memo: kopf.Memo) -> None:
    """A playbook: into the catalogue matching reads (valid ones only), and to the
    controller, which says whether it is valid (its Ready condition, written by the
    replica that acts)."""
    found = services(memo)
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    valid = None if type == "DELETED" else candidate(body)
    if valid is None:
        found.playbooks.pop(key, None)
    else:
        found.playbooks[key] = valid
    found.controller.observe(PLAYBOOK, type, body)


async def incident(type: str | None, body: dict[str, Any], memo: kopf.Memo) -> None:
    """Every change of an incident queues it; the acting replica's workers move it on."""
    services(memo).controller.observe(INCIDENT, type, body)
    # The incident gauges: from the watch, so every replica counts every incident.
    metrics.INCIDENTS.observe(type, body)


def _within_own(view: PolicyView | None, namespace: str, own: str,
                policy: dict[str, Any]) -> bool:
    """Whether ``policy`` allows nothing beyond what the quarantine policy ``own``
    allows (as the watch has it; False when it has not seen it)."""
    mine = view.get(namespace, own) if view is not None else None
    return mine is not None and adds_nothing(policy, mine)


class Quarantines(Protocol):
    """How the policy handler looks quarantines up (``Controller.quarantines``)."""

    def get(self, entry: Any, default: Iterable[HeldQuarantine], /
            ) -> Iterable[HeldQuarantine]: ...


async def network_policy(type: str | None, body: dict[str, Any], memo: kopf.Memo,
                         quarantines: Quarantines | None = None) -> None:
    """Every policy goes into the operator's view of them (views.py). One in a namespace
    holding a quarantine appeared, changed or went: each incident there puts its
    quarantine back and judges it again, at once."""
    found = services(memo)
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace"))
    view = found.policies
    if view is not None:
        if type == "DELETED":
            view.remove(namespace, str(meta.get("name")))
        else:
            view.upsert(body)
    controller = found.controller
    if quarantines is None:
        if not controller.indexed:  # checked once the incidents are listed (``follow``)
            found.unsettled.add(namespace)
            return
        quarantines = controller.quarantines
    owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    theirs = controller.quarantined_by(body) if owner else None
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
