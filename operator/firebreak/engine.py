"""The incident reconciler: gather, decide, act, one step at a time.

Kopf calls ``Engine.reconcile`` on every change to an incident's spec and on
start-up. Each call reads the incident afresh, then moves it on as far as it can:

    triage (choose a playbook, plan) -> approval -> steps in order -> Contained
    spec.resolution set                -> revert applied steps in reverse -> Resolved

Every state change is written to the status subresource *before* the next step
starts, so a restart (even after SIGKILL) resumes from the record: a step found
``Running`` is applied again from its recorded decision (actions are idempotent),
and a step found ``Applied`` is never applied again. One exception saves a write on
the common path: a decision its action calls replayable (``Prepared.replayable``: a
quarantine that neither detaches pods nor excludes them from other policies) is
written with its outcome. A crash in between leaves the step pending; the next run
plans it again, finds its policy (its own, by the incident's UID) and its label in
place, writes nothing new, and records the same outcome.

Every status write carries the ``resourceVersion`` the run started from. When
someone else wrote meanwhile, the write fails: if only intake's fields moved (signal
counts), it is made again on the fresh version; if the engine's own record moved (a
second replica acting), the run is dropped and started over from the fresh record
(``Superseded``), so a decision is never taken twice and a revert record never
overwritten. Resuming a ``Running`` step first writes that it resumes: a run from a
stale body finds out there, before it applies anything.

Temporary API failures surface as ``RetryLater``; Kopf retries the handler after
the delay. Permanent ones are written to status with the API server's message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import conditions as c
from . import metrics, notifications
from .actions.base import Action, ActionContext, ActionRefused, IncidentRef, RecordUnreadable, Verdict
from .actions.notify import deliver
from .actions.workloads import live_pods
from .api import (
    API_VERSION,
    FINALIZER,
    GROUP,
    INCIDENT_PLURAL,
    TARGET_PROBLEM_ANNOTATION,
    ActionName,
    ActionStatus,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalTimeoutAction,
    ConditionStatus,
    Delivery,
    DeliveryState,
    ObjectRef,
    OnFailure,
    PlaybookMode,
    SecurityIncidentSpec,
    SecurityIncidentStatus,
    StepState,
    TimelineEntry,
    signal_fields,
)
from .budget import Budget
from .config import OperatorConfig
from .guardrails import check_step, check_target
from .isolation import PolicySet
from .kube import (
    Conflict,
    Kube,
    NotFound,
    PermanentApiError,
    TemporaryApiError,
    path,
    without_managed_fields,
)
from .matching import PlaybookCandidate, allowed, select_playbook
from .planning import PlanError, plan

log = logging.getLogger(__name__)

TIMELINE_LIMIT = 100
APPROVAL_POLL_SECONDS = 10.0
RELEASE_RETRY_SECONDS = 60.0
CONFLICT_RETRIES = 5
# Set (to any value) on an incident being deleted whose revert failed for good: the
# finalizer goes without that revert, deliberately, and the timeline says so.
ABANDON_REVERT = f"{GROUP}/abandon-revert"
DONE = {StepState.applied, StepState.refused, StepState.failed, StepState.skipped,
        StepState.planned}
# States in which a step may have changed something. A step that failed while applying
# keeps the record of its decision and may have done part of it (a policy created, the
# pods not labelled); reverting from the record is idempotent, so it is undone too.
UNDOABLE = {StepState.applied, StepState.running, StepState.failed, StepState.reverting,
            StepState.revert_failed}
EventSink = Callable[[dict[str, Any], str, str, str, dt.datetime], None]


class RetryLater(Exception):
    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Superseded(Exception):
    """The incident's record changed under this run (another writer acted on it)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Engine:
    kube: Kube
    config: OperatorConfig
    actions: Mapping[ActionName, Action]
    emit: EventSink
    clock: Callable[[], dt.datetime] = utcnow
    # Told of every incident body this engine wrote (the controller's store).
    written: Callable[[dict[str, Any]], None] | None = None
    budget: Budget | None = None
    # A namespace's NetworkPolicies as the watch has them (views.PolicyView), for the
    # actions; None: they list them from the API server.
    policies: Callable[[str], PolicySet | None] | None = None

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.read(path(API_VERSION, INCIDENT_PLURAL, namespace, name))

    def reconcile(self, namespace: str, name: str, playbooks: Iterable[PlaybookCandidate],
                  body: dict[str, Any] | None = None) -> None:
        """Move the incident on. ``body`` is the latest state the caller saw (Kopf's,
        from its watch, which carries every status this engine wrote); without it the
        incident is read first."""
        candidates = list(playbooks)
        self._runs(namespace, name, body, lambda run: run.advance(candidates))

    def _runs(self, namespace: str, name: str, body: dict[str, Any] | None,
              work: Callable[[Run], None]) -> None:
        """Do ``work`` on the incident; on a superseded record, again from a fresh read."""
        for _ in range(CONFLICT_RETRIES):
            body = body if body is not None else self.read(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            run = Run(self, body)
            try:
                work(run)
                return
            except Superseded as exc:
                log.info("%s/%s: %s; reading it again", namespace, name, exc)
                body = None
            except TemporaryApiError as exc:
                with contextlib.suppress(Superseded):
                    run.persist()
                raise RetryLater(f"API server busy or unreachable: {exc}", delay=5.0) from exc
        raise RetryLater(f"{namespace}/{name} keeps changing under its runs", delay=1.0)

    def hold(self, namespace: str, name: str, body: dict[str, Any] | None = None,
             pods: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        """Something an incident's quarantine depends on changed (a NetworkPolicy in its
        namespace, its pods): put back what was undone, and judge it again. ``pods``:
        the pods of a namespace, listed a moment ago for every quarantine there."""
        self._runs(namespace, name, body, lambda run: run.hold(pods))

    def pods_in(self, namespace: str) -> list[dict[str, Any]]:
        """Every pod of a namespace (not being deleted), as the API's JSON without
        ``metadata.managedFields`` (a sweep holds them while its checks run)."""
        return [without_managed_fields(p) for p in live_pods(self.kube, namespace)]

    def adopt(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Put the finalizer on an incident made without it (by a person): from now on it
        is deleted only after its steps are reverted. Returns the incident as written."""
        finalizers = [*(body["metadata"].get("finalizers") or []), FINALIZER]
        return self._set_finalizers(namespace, name, body, finalizers)

    def _set_finalizers(self, namespace: str, name: str, body: dict[str, Any],
                        finalizers: list[str]) -> dict[str, Any] | None:
        patch = {"metadata": {"finalizers": finalizers,
                              "resourceVersion": body["metadata"]["resourceVersion"]}}
        try:
            written = self.kube.request(
                "PATCH", path(API_VERSION, INCIDENT_PLURAL, namespace, name), patch)
        except NotFound:
            return None
        except Conflict as exc:
            raise RetryLater(f"{namespace}/{name} changed meanwhile: {exc}", delay=0.5) from exc
        if self.written is not None:
            self.written(written)
        return written

    def release(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """The incident is being deleted: undo what it applied (nothing else records it).

        A revert that fails for good keeps the finalizer, and the incident with it: it is
        the only record of what is still applied (a cordon, a quarantine). The failure is
        written to status and retried every minute; annotating the incident with
        ``firebreak.dev/abandon-revert`` lets it go without that revert."""
        fresh = self.read(namespace, name)
        if fresh is None:
            return
        run = Run(self, fresh)
        try:
            failed = run.revert_all(reason="the incident was deleted", persist=False)
        except TemporaryApiError as exc:
            raise RetryLater(f"API server busy or unreachable: {exc}", delay=5.0) from exc
        if not failed:
            self._let_go(run.body)
            return
        annotations = run.body["metadata"].get("annotations") or {}
        if ABANDON_REVERT in annotations:
            log.warning("%s/%s: deleted without reverting %s (%s is set)", namespace, name,
                        ", ".join(failed), ABANDON_REVERT)
            run.note("RevertAbandoned", f"deleted without reverting {', '.join(failed)}: "
                                        f"{ABANDON_REVERT} is set", warning=True)
            self._let_go(run.body)
            return
        # The status is a courtesy here; the finalizer is what holds.
        with contextlib.suppress(NotFound, TemporaryApiError, Superseded):
            run.persist()
        raise RetryLater(
            f"could not revert {', '.join(failed)}; the incident stays until they are "
            f"reverted or it is annotated {ABANDON_REVERT}=true", delay=RELEASE_RETRY_SECONDS)


    def _let_go(self, body: dict[str, Any]) -> None:
        """Remove the finalizer: the incident's deletion completes."""
        finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != FINALIZER]
        self._set_finalizers(body["metadata"]["namespace"], body["metadata"]["name"], body,
                             finalizers)


class Run:
    """One reconciliation of one incident: a working copy of its status."""

    def __init__(self, engine: Engine, body: dict[str, Any]) -> None:
        self.engine = engine
        self.body = body
        meta = body["metadata"]
        self.ref = IncidentRef(namespace=meta["namespace"], name=meta["name"],
                               uid=meta.get("uid", ""))
        self.generation: int | None = meta.get("generation")
        self.spec = SecurityIncidentSpec.model_validate(body.get("spec") or {})
        # Only our own fields: Kopf or other writers may add keys we do not model.
        raw_status = {k: v for k, v in (body.get("status") or {}).items()
                      if k in _STATUS_ALIASES}
        self.status = SecurityIncidentStatus.model_validate(raw_status)
        self.conditions = list(self.status.conditions or [])
        self.steps = list(self.status.actions or [])
        self.timeline = list(self.status.timeline or [])
        self.playbook = self.status.playbook
        self.mode = self.status.mode
        self.approval = self.status.approval
        self.time_to_contain = self.status.time_to_contain_seconds
        self.notifications = list(self.status.notifications or [])
        self.deliveries = list(self.status.deliveries or [])
        self._persisted = self._status_patch()
        # A step's outcome is known but not yet written (see ``_run_step``).
        self._outcome_unwritten = False
        # Per step: what its prepare read, for its apply in this same run.
        self._seen: dict[str, dict[str, Any]] = {}
        # Pods by namespace listed for this run's checks (Engine.hold), if any.
        self._listed_pods: Mapping[str, list[dict[str, Any]]] | None = None

    # --- recording ------------------------------------------------------------

    @property
    def now(self) -> dt.datetime:
        return self.engine.clock()

    def condition(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.conditions = c.set_condition(self.conditions, type_, status, reason, message,
                                          now=self.now, generation=self.generation)

    def note(self, reason: str, message: str, warning: bool = False, event: bool = True) -> None:
        """Record in the timeline and, unless ``event`` is False, as a Kubernetes Event."""
        now = self.now
        self.timeline = [*self.timeline, TimelineEntry(time=now, reason=reason, message=message)]
        self.timeline = self.timeline[-TIMELINE_LIMIT:]
        if event:
            self.engine.emit(self.body, "Warning" if warning else "Normal", reason, message, now)
        log.info("%s/%s: %s: %s", self.ref.namespace, self.ref.name, reason, message)

    def _status_patch(self) -> dict[str, Any]:
        phase = c.derive_phase(self.conditions, self.spec.resolution is not None)
        status = SecurityIncidentStatus(
            phase=phase,
            observed_generation=self.generation,
            conditions=self.conditions or None,
            playbook=self.playbook,
            mode=self.mode,
            approval=self.approval,
            actions=self.steps or None,
            timeline=self.timeline or None,
            time_to_contain_seconds=self.time_to_contain,
            notifications=self.notifications or None,
            deliveries=self.deliveries or None,
        )
        return status.to_api()

    def persist(self) -> None:
        """Write the status if it changed, on the version this run read (see the module
        docstring). Fields owned by intake (signal counts) are written only once, by
        the first write, as the incident's creation implies them (see ``_write``)."""
        patch = self._status_patch()
        if patch != self._persisted:
            self._write(patch)
        # Also when nothing changed: a transition on record whose post was not (a crash
        # between the two) is announced now.
        self._announce()

    def _write(self, patch: dict[str, Any]) -> None:
        meta = self.body["metadata"]
        current = self.body
        for _ in range(CONFLICT_RETRIES):
            # The first status write also records the signal that created the incident
            # (intake's fields, as the creation implies them): one write less per incident.
            first = {} if (current.get("status") or {}).get("signalCount") is not None \
                else signal_fields(current)
            try:
                written = self.engine.kube.request(
                    "PATCH", path(API_VERSION, INCIDENT_PLURAL, self.ref.namespace,
                                  self.ref.name, "status"),
                    {"metadata": {"resourceVersion": meta["resourceVersion"]},
                     "status": {**first, **patch}})
            except Conflict as exc:
                fresh = self.engine.read(self.ref.namespace, self.ref.name)
                if fresh is None:
                    raise Superseded("the incident is gone") from exc
                if Run(self.engine, fresh)._persisted != self._persisted:
                    raise Superseded("its record was changed by another writer") from exc
                meta["resourceVersion"] = fresh["metadata"]["resourceVersion"]
                current = fresh
                continue
            meta["resourceVersion"] = written["metadata"]["resourceVersion"]
            previous, self._persisted = self._persisted, patch
            self._outcome_unwritten = False
            metrics.observe_status(previous, patch)
            if self.engine.written is not None:
                self.engine.written(written)
            return
        raise Superseded("the incident keeps changing")

    def _announce(self) -> None:
        """Tell the playbook's notifications about the transitions on record now; each
        delivery is recorded after it is made (at least once, see notifications.py)."""
        if not self.notifications:
            return
        showing = notifications.occurrences(self.conditions, self.spec.resolution is not None)
        due = notifications.due(self.notifications, showing, self.deliveries)
        for notification, occurrence in due:
            playbook = self.playbook
            values = notifications.variables(
                namespace=self.ref.namespace, name=self.ref.name, spec=self.spec,
                phase=c.derive_phase(self.conditions, self.spec.resolution is not None),
                playbook=f"{playbook.namespace}/{playbook.name}" if playbook else "",
                event=occurrence.event.value, detail=occurrence.detail, time=self.now)
            body = notifications.render(notification.format, notification.message,
                                        notification.body, values)
            outcome = deliver(self.engine.kube, self.engine.config.namespace,
                              notification.secret_ref.name, body)
            state = DeliveryState.sent if outcome.delivered else DeliveryState.failed
            self.deliveries = notifications.record(self.deliveries, Delivery(
                notification=notification.name, event=occurrence.event,
                since=occurrence.since, state=state, time=self.now,
                attempts=max(1, outcome.attempts), message=outcome.message))
            what = f"{occurrence.event.value} to {notification.name}: {outcome.message}"
            if outcome.delivered:
                self.note("NotificationSent", what, event=False)
            else:
                self.note("NotificationFailed", what, warning=True)
        if due:
            self.persist()

    def set_step(self, index: int, **changes: Any) -> ActionStatus:
        updated = self.steps[index].model_copy(update=changes)
        self.steps[index] = updated
        return updated

    # --- the flow -------------------------------------------------------------

    def advance(self, playbooks: list[PlaybookCandidate]) -> None:
        if self.spec.resolution is not None:
            self.resolve()
            return
        triaged = c.find(self.conditions, c.TRIAGED)
        if triaged is None or triaged.status is ConditionStatus.unknown:
            # Not persisted on its own: the first step's record carries it (one write
            # less per incident); re-triaging after a crash here gives the same plan.
            self.triage(playbooks)
        if not c.is_true(self.conditions, c.TRIAGED):
            self.persist()
            return
        if not self.approve(playbooks):
            return
        if self.mode is PlaybookMode.dry_run:
            self.dry_run()
        else:
            self.within_budget(playbooks)
            self.execute()
        self.persist()

    def within_budget(self, playbooks: list[PlaybookCandidate]) -> None:
        """Before the first step: wait (RetryLater) while the flood budget is spent."""
        budget = self.engine.budget
        if budget is None or self.playbook is None \
                or any(s.state is not StepState.pending for s in self.steps):
            return
        book = f"{self.playbook.namespace}/{self.playbook.name}"
        found = next((p for p in playbooks if p.name == self.playbook.name
                      and p.namespace == self.playbook.namespace), None)
        limit = found.spec.budget.per_minute if found and found.spec.budget else None
        wait = budget.admit((self.ref.namespace, self.ref.name), book, limit, self.now)
        if wait is None:
            return
        contained = c.find(self.conditions, c.CONTAINED)
        message = f"waiting: {wait.reason}"
        if contained is None or contained.reason != c.BUDGET_EXHAUSTED:
            self.note(c.BUDGET_EXHAUSTED, message, warning=True)
        self.condition(c.CONTAINED, ConditionStatus.false, c.BUDGET_EXHAUSTED, message)
        self.persist()
        raise RetryLater("over the flood budget", delay=wait.seconds)

    def triage(self, playbooks: list[PlaybookCandidate]) -> None:
        if c.find(self.conditions, c.TRIAGED) is None:
            self.condition(c.TRIAGED, ConditionStatus.unknown, "Triaging", "choosing a playbook")
        if self._nothing_to_act_on():
            return
        chosen = self._choose(playbooks)
        if chosen is None:
            return
        try:
            steps = plan(self.spec, chosen.spec, self._check_params)
        except PlanError as exc:
            self.condition(c.TRIAGED, ConditionStatus.false, c.INVALID_PLAYBOOK,
                           f"playbook {chosen.namespace}/{chosen.name}: {exc}")
            self.note(c.INVALID_PLAYBOOK, str(exc), warning=True)
            return
        self.playbook = ObjectRef(name=chosen.name, namespace=chosen.namespace)
        self.mode = chosen.spec.mode
        # Fixed with the plan: a playbook edited while a person decides does not change
        # how long they have, or what happens when nobody does.
        self.approval = chosen.spec.approval
        self.notifications = list(chosen.spec.notifications or [])
        self.steps = [
            ActionStatus(step=s.name, action=s.action, state=StepState.pending,
                         params=s.params or None, on_failure=s.on_failure)
            for s in steps
        ]
        message = (f"playbook {chosen.namespace}/{chosen.name} ({len(steps)} steps, "
                   f"{chosen.spec.mode.value})")
        self.condition(c.TRIAGED, ConditionStatus.true, c.PLAYBOOK_SELECTED, message)
        automatic = chosen.spec.approval.policy is ApprovalPolicy.automatic
        # An Event when the incident now waits (for a person, or as a dry run); when the
        # steps run at once, the Event that tells their outcome follows in moments.
        self.note(c.PLAYBOOK_SELECTED, message,
                  event=not automatic or chosen.spec.mode is PlaybookMode.dry_run)
        if automatic:
            self.condition(c.APPROVED, ConditionStatus.true, c.APPROVAL_NOT_REQUIRED,
                           "the playbook runs without approval")
        else:
            self.condition(c.APPROVED, ConditionStatus.false, c.AWAITING_APPROVAL,
                           f"waiting up to {chosen.spec.approval.timeout_seconds}s for "
                           f"spec.approval")
            self.note(c.AWAITING_APPROVAL, "a person must approve before any step runs")
        self.condition(c.CONTAINED, ConditionStatus.false, c.NOT_STARTED, "no step has run yet")

    def _nothing_to_act_on(self) -> bool:
        """A signal recorded for people to see, not to act on: it names no target (or
        intake dropped one Kubernetes could not name), or its namespace does not exist."""
        problem = (self.body["metadata"].get("annotations") or {}).get(TARGET_PROBLEM_ANNOTATION)
        if self.spec.target is None:
            reason = c.NO_TARGET
            message = f"nothing to act on: {problem or 'the signal names no object'}"
        elif problem:
            reason, message = c.TARGET_NOT_FOUND, f"nothing to act on: {problem}"
        else:
            return False
        self.condition(c.TRIAGED, ConditionStatus.false, reason, message)
        self.note(reason, message)
        return True

    def _choose(self, playbooks: list[PlaybookCandidate]) -> PlaybookCandidate | None:
        operator_ns = self.engine.config.namespace
        wanted = self.spec.playbook_ref
        if wanted is not None:
            namespace = wanted.namespace or self.ref.namespace
            found = next((p for p in playbooks
                          if p.name == wanted.name and p.namespace == namespace), None)
            problem = None
            if found is None:
                problem = f"playbook {namespace}/{wanted.name} named in spec.playbookRef not found"
            elif not allowed(found.namespace, self.spec, self.ref.namespace, operator_ns):
                problem = (f"playbook {namespace}/{wanted.name} may only answer incidents in "
                           f"namespace {namespace}")
            if problem is not None:
                self.condition(c.TRIAGED, ConditionStatus.false, c.INVALID_PLAYBOOK, problem)
                self.note(c.INVALID_PLAYBOOK, problem, warning=True)
            return found if problem is None else None
        chosen = select_playbook(self.spec, self.ref.namespace, playbooks, operator_ns)
        if chosen is None:
            message = "no ResponsePlaybook matches this incident; nothing will be done"
            self.condition(c.TRIAGED, ConditionStatus.false, c.NO_MATCHING_PLAYBOOK, message)
            self.note(c.NO_MATCHING_PLAYBOOK, message)
        return chosen

    def _check_params(self, action: ActionName, params: Mapping[str, Any]) -> None:
        self.engine.actions[action].parse(dict(params))

    def approve(self, playbooks: list[PlaybookCandidate]) -> bool:
        """Whether the steps may run; waits (RetryLater) while a decision is due."""
        approved = c.find(self.conditions, c.APPROVED)
        if approved is None or approved.status is ConditionStatus.true:
            return True
        if approved.reason != c.AWAITING_APPROVAL:
            return False
        decision = self.spec.approval
        if decision is not None:
            who = f" by {decision.by}" if decision.by else ""
            why = f": {decision.reason}" if decision.reason else ""
            if decision.decision is ApprovalDecision.approve:
                self.condition(c.APPROVED, ConditionStatus.true, c.APPROVED_BY_PERSON,
                               f"approved{who}{why}")
                self.note(c.APPROVED_BY_PERSON, f"approved{who}{why}")
                return True
            self._end_unapproved(c.REJECTED_BY_PERSON, f"rejected{who}{why}")
            return False
        policy = self.approval
        if policy is None:  # triaged by a release that did not record it: read it live
            playbook = next((p for p in playbooks if self.playbook is not None
                             and p.name == self.playbook.name
                             and p.namespace == self.playbook.namespace), None)
            if playbook is None:
                self._end_unapproved(c.PLAYBOOK_DELETED,
                                     "the playbook was deleted while awaiting approval")
                return False
            policy = playbook.spec.approval
        deadline = approved.last_transition_time + dt.timedelta(seconds=policy.timeout_seconds)
        remaining = (deadline - self.now).total_seconds()
        if remaining > 0:
            self.persist()
            raise RetryLater("awaiting approval", delay=min(remaining, APPROVAL_POLL_SECONDS))
        if policy.on_timeout is ApprovalTimeoutAction.approve:
            message = f"no decision within {policy.timeout_seconds}s; the playbook proceeds"
            self.condition(c.APPROVED, ConditionStatus.true, c.APPROVED_ON_TIMEOUT, message)
            self.note(c.APPROVED_ON_TIMEOUT, message)
            return True
        self._end_unapproved(c.APPROVAL_TIMED_OUT,
                             f"no decision within {policy.timeout_seconds}s; nothing will run")
        return False

    def _end_unapproved(self, reason: str, message: str) -> None:
        self.condition(c.APPROVED, ConditionStatus.false, reason, message)
        self.condition(c.CONTAINED, ConditionStatus.false, reason, "no step ran")
        for i, step in enumerate(self.steps):
            if step.state is StepState.pending:
                self.set_step(i, state=StepState.skipped, message="not approved")
        self.note(reason, message)
        self.persist()

    # --- steps ------------------------------------------------------------------

    def context(self, step: ActionStatus) -> ActionContext:
        assert self.spec.target is not None  # planning refused incidents without one
        playbook = self.playbook
        return ActionContext(
            kube=self.engine.kube, config=self.engine.config, incident=self.ref,
            target=self.spec.target, step=step.step, labels=dict(self.spec.labels or {}),
            now=self.now, incident_spec=self.spec,
            playbook=f"{playbook.namespace}/{playbook.name}" if playbook else "",
            seen=self._seen.setdefault(step.step, {}), policies=self.engine.policies,
            listed_pods=self._listed_pods)

    def _prepare(self, index: int) -> tuple[Action, Any, Any] | None:
        """Prepare step ``index`` and judge it; None when it was refused or failed."""
        step = self.steps[index]
        action = self.engine.actions[step.action]
        refusal = check_target(self.spec.target, self.engine.config) \
            if action.acts_on_target else None
        if refusal is not None:
            self._finish(index, StepState.refused, refusal)
            return None
        try:
            params = action.parse(step.params)
            prepared = action.prepare(self.context(step), params)
        except (ActionRefused, ValidationError) as exc:
            self._finish(index, StepState.refused, str(exc))
            return None
        except PermanentApiError as exc:
            self._finish(index, StepState.failed, str(exc))
            return None
        refusal = check_step(step.action, prepared.objects, prepared.facts, self.engine.config)
        if refusal is not None:
            self._finish(index, StepState.refused, refusal, objects=prepared.objects)
            return None
        return action, params, prepared

    def _finish(self, index: int, state: StepState, message: str, **changes: Any) -> None:
        step = self.set_step(index, state=state, message=message,
                             finished_at=self.now, **changes)
        self._outcome_unwritten = True
        reason = {StepState.refused: "StepRefused", StepState.failed: "StepFailed",
                  StepState.applied: "StepApplied", StepState.planned: "StepPlanned"}[state]
        trouble = state in (StepState.refused, StepState.failed)
        # Each applied step is in the timeline; Events (one API write each) are kept for
        # what a person must notice (see ``execute`` for the summary, StepsApplied).
        self.note(reason, f"{step.step} ({step.action.value}): {message}",
                  warning=trouble, event=trouble)

    def dry_run(self) -> None:
        for index, step in enumerate(self.steps):
            if step.state is not StepState.pending:
                continue
            prepared = self._prepare(index)
            if prepared is None:
                continue
            _, _, p = prepared
            self._finish(index, StepState.planned, f"would {p.message}", objects=p.objects,
                         warnings=p.warnings or None)
        planned = sum(s.state is StepState.planned for s in self.steps)
        self.condition(c.CONTAINED, ConditionStatus.false, c.DRY_RUN,
                       f"dry run: {planned} of {len(self.steps)} steps planned, nothing changed")

    def execute(self) -> None:
        contained = c.find(self.conditions, c.CONTAINED)
        if contained is not None and contained.status is ConditionStatus.true:
            return
        aborted: ActionStatus | None = None
        for index in range(len(self.steps)):
            step = self.steps[index]
            if aborted is not None:
                if step.state is StepState.pending:
                    self.set_step(index, state=StepState.skipped,
                                  message=f"skipped: step {aborted.step} failed")
                continue
            if step.state not in DONE:
                self.condition(c.CONTAINED, ConditionStatus.false, c.STEPS_RUNNING,
                               f"running step {step.step} ({step.action.value})")
                self._run_step(index)
            step = self.steps[index]
            if step.state in (StepState.refused, StepState.failed) \
                    and step.on_failure is OnFailure.abort:
                aborted = step
        applied = [s for s in self.steps if s.state is StepState.applied]
        if aborted is not None:
            self.condition(c.CONTAINED, ConditionStatus.false, c.STEP_FAILED,
                           f"step {aborted.step} did not complete: {aborted.message}")
        elif applied:
            message = f"{len(applied)} of {len(self.steps)} steps applied"
            # An Event where a person waited for it (the steps ran after an approval);
            # else the condition and the timeline say it, one API write less per
            # incident on the common path.
            approved = c.find(self.conditions, c.APPROVED)
            waited = approved is not None and approved.reason != c.APPROVAL_NOT_REQUIRED
            self.note(c.STEPS_APPLIED, message, event=waited)
            self._contained(message)
        else:
            self.condition(c.CONTAINED, ConditionStatus.false, c.NOT_CONTAINED,
                           "no step could be applied")

    def _run_step(self, index: int) -> None:
        """Run one step. Its decision is persisted before it is applied; its outcome
        travels with the next write (the next step's decision, or the final status),
        so it is always on record before anything else changes."""
        step = self.steps[index]
        if step.state is StepState.pending:
            prepared = self._prepare(index)
            if prepared is None:
                return
            action, params, p = prepared
            step = self.set_step(index, state=StepState.running, started_at=self.now,
                                 message=p.message, objects=p.objects,
                                 revert=p.record.to_api(), warnings=p.warnings or None)
            for warning in p.warnings:
                self.note("StepWarning", warning, warning=True)
            # A replayable decision travels with the step's outcome: a crash before
            # that write leaves the step pending, and the next run plans it again and
            # finds its work done. Not when an earlier step's outcome is still
            # unwritten: that step would be applied again from its Running record.
            if self._outcome_unwritten or not p.replayable:
                self.persist()
        else:  # Running: a previous run recorded the decision, then stopped.
            action = self.engine.actions[step.action]
            params = action.parse(step.params)
            # Written before acting: a run from an out-of-date body (the step long
            # applied, or taken over by another replica) fails here instead.
            self.note("StepResumed", f"{step.step} ({step.action.value}): applying the "
                                     f"recorded decision again after an interruption",
                      event=False)
            self.persist()
        try:
            result = action.apply(self.context(step), params, action.load(step.revert))
        except RecordUnreadable as exc:
            # Kept as it is, for a person to read: it may still be needed to undo the step.
            self._finish(index, StepState.failed, str(exc))
            return
        except ActionRefused as exc:
            # Refused before changing anything: there is nothing of ours to undo (and
            # what the record names may be someone else's, such as a same-named policy).
            self._finish(index, StepState.failed, str(exc), revert=None)
            return
        except PermanentApiError as exc:
            # Possibly half done: the record stays, so that resolution undoes that half.
            self._finish(index, StepState.failed, str(exc))
            return
        record = result.record.to_api() if action.revertible and result.record else None
        self._finish(index, StepState.applied, result.message, revert=record,
                     warnings=[*(step.warnings or []), *result.warnings] or None,
                     evidence=result.evidence or None)
        if result.verdict is not None:
            self._judge([result.verdict])

    def _judge(self, verdicts: list[Verdict]) -> None:
        """Record whether what the steps set up holds (the Isolated condition); an Event
        when that changes."""
        holds = all(v.holds for v in verdicts)
        message = "; ".join(v.message for v in verdicts if v.holds is holds)
        before = c.find(self.conditions, c.ISOLATED)
        reason = c.ISOLATION_VERIFIED if holds else c.ISOLATION_DEFEATED
        status = ConditionStatus.true if holds else ConditionStatus.false
        self.condition(c.ISOLATED, status, reason, message)
        if before is None or before.status is not status:
            if not holds:
                self.note(c.ISOLATION_DEFEATED, message, warning=True)
            elif before is not None:
                self.note(c.ISOLATION_VERIFIED, message)

    def _contained(self, message: str) -> None:
        """Contained is True only while every quarantine is verified to hold."""
        isolated = c.find(self.conditions, c.ISOLATED)
        if isolated is not None and isolated.status is not ConditionStatus.true:
            self.condition(c.CONTAINED, ConditionStatus.false, c.ISOLATION_DEFEATED,
                           f"{message}, but {isolated.message}")
            return
        if self.time_to_contain is None:
            self.time_to_contain = self._seconds_since_first_signal()
        self.condition(c.CONTAINED, ConditionStatus.true, c.STEPS_APPLIED, message)

    def hold(self, pods: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        """Keep applied steps in force (a quarantine against policies and pods that
        changed since) and judge them again; a no-op for incidents not holding any."""
        self._listed_pods = pods
        contained = c.find(self.conditions, c.CONTAINED)
        if self.spec.resolution is not None or contained is None or not (
                contained.status is ConditionStatus.true
                or contained.reason == c.ISOLATION_DEFEATED):
            return
        verdicts = []
        for index, step in enumerate(self.steps):
            if step.state is not StepState.applied:
                continue
            action = self.engine.actions[step.action]
            if not action.held:
                continue  # nothing to hold (and no record to read: a snapshot keeps none)
            try:
                held = action.hold(self.context(step), action.parse(step.params),
                                   action.load(step.revert))
            except (ActionRefused, PermanentApiError) as exc:
                verdicts.append(Verdict(False, f"{step.step}: could not be held: {exc}"))
                continue
            if held is None:
                continue
            record = held.record.to_api()
            if record != step.revert:
                self.set_step(index, revert=record)
            for change in held.changes:
                self.note(c.QUARANTINE_RESTORED, f"{step.step}: {change}")
            verdicts.append(held.verdict)
        if not verdicts:
            return
        self._judge(verdicts)
        applied = sum(s.state is StepState.applied for s in self.steps)
        self._contained(f"{applied} of {len(self.steps)} steps applied")
        self.persist()

    def _seconds_since_first_signal(self) -> float:
        first = self.status.first_seen
        if first is None:  # before the first status write: as the creation says
            seen = signal_fields(self.body).get("firstSeen") \
                or self.body["metadata"].get("creationTimestamp")
            first = dt.datetime.fromisoformat(seen) if seen else self.now
        return round(max(0.0, (self.now - first).total_seconds()), 3)

    # --- resolution ---------------------------------------------------------------

    def resolve(self) -> None:
        if c.is_true(self.conditions, c.RESOLVED):
            return
        resolution = self.spec.resolution
        assert resolution is not None
        by = f" by {resolution.by}" if resolution.by else ""
        if c.find(self.conditions, c.RESOLVED) is None:
            self.note("ResolutionRequested", f"resolved{by}: {resolution.reason}")
        self.revert_all(reason=resolution.reason, persist=True)

    def revert_all(self, reason: str, persist: bool) -> list[str]:
        """Revert every undoable step, last first; the names of those that failed."""
        def save() -> None:
            if persist:
                self.persist()

        self.condition(c.RESOLVED, ConditionStatus.false, c.REVERTING, "reverting applied steps")
        save()
        failed = []
        for index in reversed(range(len(self.steps))):
            step = self.steps[index]
            if step.state is StepState.pending:
                self.set_step(index, state=StepState.skipped,
                              message="skipped: the incident was resolved first")
                continue
            action = self.engine.actions[step.action]
            if step.state not in UNDOABLE or step.revert is None or not action.revertible:
                continue
            self.set_step(index, state=StepState.reverting)
            save()
            try:
                message = action.revert(self.context(step), action.load(step.revert))
            except (ActionRefused, PermanentApiError) as exc:
                self.set_step(index, state=StepState.revert_failed, message=str(exc))
                self.note("RevertFailed", f"{step.step}: {exc}", warning=True)
                failed.append(step.step)
                save()
                continue
            self.set_step(index, state=StepState.reverted, message=message, finished_at=self.now)
            self.note("StepReverted", f"{step.step} ({step.action.value}): {message}")
            save()
        if failed:
            self.condition(c.RESOLVED, ConditionStatus.false, c.REVERT_FAILED,
                           f"could not revert {', '.join(failed)}; see actions")
        else:
            # Counted from the record, not this run: a run that resumes after a restart
            # finds the steps reverted before it already Reverted.
            reverted = sum(s.state is StepState.reverted for s in self.steps)
            message = f"reverted {reverted} step(s): {reason}"
            self.condition(c.RESOLVED, ConditionStatus.true, c.REVERTED, message)
            self.note(c.REVERTED, message)
        save()
        return failed


_STATUS_ALIASES = {f.alias for f in SecurityIncidentStatus.model_fields.values() if f.alias}
