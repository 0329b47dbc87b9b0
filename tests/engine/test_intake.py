"""Intake over the recording API: the exact writes of a first and a repeated
delivery, conflicts, successors, release on a resolved signal, and what the API
server's errors become. The cluster tests check the same against etcd; here each
write and its precondition is asserted."""

from __future__ import annotations

import datetime as dt

import pytest

from firebreak.api import FINALIZER, FIRST_SEEN_ANNOTATION, Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.intake import WORKLOAD_KIND_LABEL, WORKLOAD_NAME_LABEL, Intake
from firebreak.kube import PermanentApiError, TemporaryApiError
from firebreak.sources.signal import SignalStatus, incident_name
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    alert_signal,
    incident,
    signals,
    status,
)

signal = alert_signal


NAME = incident_name(signal())


@pytest.fixture
def intake(api: Recorder, clock: Clock) -> Intake:
    add_app(api)
    return Intake(api.kube(), OperatorConfig(namespace=OPERATOR_NS), clock=clock, retry_for=0)


def test_a_first_delivery_is_one_create_that_counts_itself(
        intake: Intake, api: Recorder) -> None:
    recorded = intake.record(signal())
    assert (recorded.namespace, recorded.name, recorded.outcome) == (NS, NAME, "created")
    assert api.written() == [f"create securityincidents {NS}/{NAME}"]
    (create,) = api.writes
    assert create.body["metadata"]["finalizers"] == [FINALIZER]
    assert create.body["spec"]["target"] == {"kind": "Pod", "namespace": NS,
                                             "name": "web-5d9c-0"}
    assert create.body["spec"]["labels"] == {
        "alertname": "CryptoMiner", WORKLOAD_KIND_LABEL: "Deployment",
        WORKLOAD_NAME_LABEL: "web"}
    # No status write: the creation is the first signal, and says when it came.
    assert create.body["metadata"]["annotations"] == {
        FIRST_SEEN_ANNOTATION: "2025-03-01T12:00:00Z"}
    assert "status" not in incident(api, NAME)
    assert signals(api, NAME) == {"signalCount": 1, "firstSeen": "2025-03-01T12:00:00Z",
                                  "lastSeen": "2025-03-01T12:00:00Z"}


def test_a_repeated_delivery_reads_and_counts(intake: Intake, api: Recorder,
                                              clock: Clock) -> None:
    intake.record(signal())
    clock.advance(30)
    again = intake.record(signal())
    assert again.outcome == "updated"
    assert api.written()[1:] == [f"patch securityincidents/status {NS}/{NAME}"]
    # Written with the resourceVersion read: a precondition.
    assert set(api.writes[1].body["metadata"]) == {"resourceVersion"}
    assert status(api, NAME) == {"signalCount": 2, "firstSeen": "2025-03-01T12:00:00Z",
                                 "lastSeen": "2025-03-01T12:00:30Z"}


def test_a_fresh_intake_that_loses_the_create_race_counts_on_the_winner(
        intake: Intake, api: Recorder, clock: Clock) -> None:
    intake.record(signal())
    other = Intake(api.kube(), OperatorConfig(namespace=OPERATOR_NS), clock=clock, retry_for=0)
    assert other.record(signal()).outcome == "updated"  # 409 on create, then read
    assert status(api, NAME)["signalCount"] == 2
    assert len(api.written("securityincidents")) == 2  # the refused create wrote nothing


def test_a_conflicting_count_is_read_again_and_retried(intake: Intake, api: Recorder) -> None:
    intake.record(signal())
    # Another replica counts between our read and our write.
    api.fail("patch", "securityincidents", 409, "the object has been modified", times=1,
             subresource="status")
    intake.record(signal())
    assert status(api, NAME)["signalCount"] == 2
    gets = [p for m, p in api.requests if m == "GET" and p.endswith(NAME)]
    assert len(gets) == 2  # the read of a known fingerprint, and the re-read after 409


def test_a_firing_after_resolution_opens_a_successor(intake: Intake, api: Recorder) -> None:
    intake.record(signal())
    api.objects[("securityincidents", NS, NAME)]["spec"]["resolution"] = {"reason": "done"}
    again = intake.record(signal())
    assert (again.name, again.outcome) == (f"{NAME}-2", "created")
    assert intake.record(signal()).name == f"{NAME}-2"
    assert signals(api, NAME)["signalCount"] == 1


def test_a_repeat_of_the_resolved_firing_opens_nothing_a_new_firing_does(
        intake: Intake, api: Recorder, clock: Clock) -> None:
    started = dt.datetime(2025, 3, 1, 11, 59, tzinfo=dt.UTC)
    intake.record(signal(time=started))
    api.objects[("securityincidents", NS, NAME)]["spec"]["resolution"] = {"reason": "ours"}
    writes = len(api.writes)
    clock.advance(3600)  # Alertmanager's repeat_interval: the same firing, sent again
    repeat = intake.record(signal(time=started))
    assert (repeat.name, repeat.outcome) == (NAME, "repeated")
    assert api.writes[writes:] == []
    # The alert resolved and fired again: a start time the resolved incident never saw.
    again = intake.record(signal(time=started + dt.timedelta(hours=2)))
    assert (again.name, again.outcome) == (f"{NAME}-2", "created")
    # The old firing repeated once more still belongs to the resolved incident.
    assert intake.record(signal(time=started)).name == NAME
    assert signals(api, f"{NAME}-2")["signalCount"] == 1


def test_a_resolved_signal_releases_only_when_the_playbook_says_so(
        intake: Intake, api: Recorder) -> None:
    resolved = signal(status=SignalStatus.resolved)
    assert intake.record(resolved).outcome == "ignored"
    assert api.writes == []

    intake.record(signal())
    api.objects[("securityincidents", NS, NAME)]["status"] = {"playbook": {
        "name": "auto", "namespace": NS}}
    assert intake.record(resolved).outcome == "ignored"  # no such playbook
    api.add({"kind": "ResponsePlaybook", "metadata": {"name": "auto", "namespace": NS},
             "spec": {"release": "manual", "steps": []}})
    assert intake.record(resolved).outcome == "ignored"
    api.objects[("responseplaybooks", NS, "auto")]["spec"]["release"] = "onSignalResolved"
    writes = len(api.writes)
    assert intake.record(resolved).outcome == "released"
    assert api.written()[writes:] == [f"patch securityincidents {NS}/{NAME}"]
    assert incident(api, NAME)["spec"]["resolution"] == {"reason": "the signal resolved",
                                                         "by": "alertmanager"}
    assert intake.record(resolved).outcome == "ignored"  # already resolved


def test_protected_and_targetless_signals_go_to_the_operator_namespace(
        intake: Intake, api: Recorder) -> None:
    system = intake.record(signal(pod="etcd-0", namespace="kube-system", fingerprint="fp-2"))
    nowhere = intake.record(signal(fingerprint="fp-3", target=None))
    assert system.namespace == nowhere.namespace == OPERATOR_NS
    assert api.get("securityincidents", OPERATOR_NS, nowhere.name) is not None


def test_a_replica_set_target_becomes_its_deployment(intake: Intake, api: Recorder) -> None:
    recorded = intake.record(signal(fingerprint="fp-rs", target=Target(
        kind=TargetKind.replica_set, namespace=NS, name="web-5d9c")))
    assert incident(api, recorded.name)["spec"]["target"] == {
        "kind": "Deployment", "namespace": NS, "name": "web"}


def test_a_replica_set_is_read_once_for_all_its_pods_until_it_is_replaced(
        intake: Intake, api: Recorder) -> None:
    def reads() -> int:
        return sum(1 for m, p in api.requests if m == "GET" and "/replicasets/" in p)

    for i in range(3):
        recorded = intake.record(signal(pod=f"web-5d9c-{i}", fingerprint=f"fp-{i}"))
        assert incident(api, recorded.name)["spec"]["labels"][WORKLOAD_NAME_LABEL] == "web"
    assert reads() == 1
    # The ReplicaSet deleted and made again under the same name, now owned by another
    # Deployment: its new uid is read afresh.
    replicaset = api.objects[("replicasets", NS, "web-5d9c")]
    replicaset["metadata"]["uid"] = "uid-new"
    replicaset["metadata"]["ownerReferences"][0]["name"] = "web-v2"
    api.objects[("pods", NS, "web-5d9c-0")]["metadata"]["ownerReferences"][0]["uid"] = "uid-new"
    recorded = intake.record(signal(fingerprint="fp-again"))
    assert incident(api, recorded.name)["spec"]["labels"][WORKLOAD_NAME_LABEL] == "web-v2"
    assert reads() == 2


def test_a_target_it_may_not_read_is_stored_as_given(intake: Intake, api: Recorder) -> None:
    api.fail("get", "pods", 403, "pods is forbidden")
    recorded = intake.record(signal())
    assert incident(api, recorded.name)["spec"]["labels"] == {"alertname": "CryptoMiner"}


def test_an_unreachable_api_is_temporary_and_stores_nothing(intake: Intake,
                                                            api: Recorder) -> None:
    api.fail("*", "securityincidents", 503, "etcdserver: request timed out")
    with pytest.raises(TemporaryApiError, match="503"):
        intake.record(signal())
    assert api.writes == []


def test_a_refused_incident_is_permanent(intake: Intake, api: Recorder) -> None:
    api.fail("create", "securityincidents", 422, "spec.title: Too long")
    with pytest.raises(PermanentApiError, match="422"):
        intake.record(signal())
