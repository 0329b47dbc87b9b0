"""Every state of a step, driven through ``Engine`` over the recording API.

Pending -> Running -> Applied; Refused; Failed (abort: the rest Skipped; continue:
the next one runs); Planned (dry run); Skipped; Reverting -> Reverted or
RevertFailed. Each test asserts the writes the API received, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from firebreak.config import OperatorConfig
from firebreak.engine import Engine, RetryLater
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    condition,
    incident,
    playbook,
    states,
    status,
    step,
)

STATUS = "patch securityincidents/status shop/miner"
ISOLATE = step("isolate", "isolateNetwork")
SCALE = step("stop", "scaleDown")
CORDON = step("cordon", "cordonNode")


@pytest.fixture(autouse=True)
def world(api: Recorder) -> None:
    add_nodes(api, "node-a", "node-b", "node-c")
    add_app(api)


def test_steps_run_in_order_each_recorded_before_the_next(api: Recorder, engine: Engine,
                                                         clock: Clock) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE, CORDON, SCALE)])

    assert api.written() == [
        # No Event: the playbook chosen and its steps' outcome are in the status (the
        # steps ran at once, so no one waited for them).
        # The quarantine's decision is replayable (a crash before its outcome is
        # written leaves it pending, planned again, found done): no write before it.
        "create networkpolicies shop/firebreak-quarantine-miner",
        "patch pods shop/web-5d9c-0",
        STATUS,                                               # triaged; isolate Applied;
        "patch nodes node-a",                                 # cordon Running
        STATUS,                                               # cordon Applied; stop Running
        "patch deployments/scale shop/web",
        STATUS,                                               # stop Applied; Contained
    ]
    # Each status write holds the decision of the step about to run.
    recorded = [w.body["status"] for w in api.writes if w.resource == "securityincidents"]
    assert [[a["state"] for a in s["actions"]] for s in recorded] == [
        ["Applied", "Running", "Pending"],
        ["Applied", "Applied", "Running"],
        ["Applied", "Applied", "Applied"],
    ]
    assert recorded[1]["actions"][2]["revert"] == {
        "version": 1, "kind": "Deployment", "namespace": NS, "name": "web",
        "previousReplicas": 3, "replicas": 0}
    final = status(api)
    assert final["phase"] == "Contained"
    assert condition(api, "Contained")["reason"] == "StepsApplied"
    assert condition(api, "Approved")["reason"] == "ApprovalNotRequired"
    assert final["playbook"] == {"name": "contain", "namespace": OPERATOR_NS}
    assert final["timeToContainSeconds"] == 0.0
    assert api.get("deployments", NS, "web")["spec"]["replicas"] == 0  # type: ignore[index]
    node = api.get("nodes", None, "node-a")
    assert node is not None and node["spec"]["unschedulable"] is True


def test_a_second_reconcile_of_a_contained_incident_writes_nothing(api: Recorder,
                                                                    engine: Engine) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    before = len(api.writes)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert api.writes[before:] == []


def test_time_to_contain_counts_from_the_first_signal(api: Recorder, engine: Engine,
                                                      clock: Clock) -> None:
    add_incident(api)
    api.objects[("securityincidents", NS, "miner")]["status"] = {
        "signalCount": 2, "firstSeen": "2025-03-01T11:59:30Z"}
    clock.advance(12.5)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert status(api)["timeToContainSeconds"] == 42.5
    assert status(api)["signalCount"] == 2  # owned by intake, never written by the engine


def test_a_refused_step_aborts_and_skips_the_rest(api: Recorder, engine: Engine) -> None:
    # A bare pod has no Deployment to scale: the step is refused before any write.
    api.add({"kind": "Pod", "metadata": {"name": "bare", "namespace": NS},
             "spec": {"nodeName": "node-a"}})
    add_incident(api, target={"kind": "Pod", "namespace": NS, "name": "bare"})
    engine.reconcile(NS, "miner", [playbook("contain", SCALE, ISOLATE, CORDON)])

    assert states(api) == {"stop": "Refused", "isolate": "Skipped", "cordon": "Skipped"}
    actions = status(api)["actions"]
    assert "managed by no controller" in actions[0]["message"]
    assert actions[1]["message"] == "skipped: step stop failed"
    assert status(api)["phase"] == "Failed"
    assert condition(api, "Contained")["reason"] == "StepFailed"
    assert api.written() == [
        "create events shop/miner.00001",  # StepRefused
        STATUS,
    ]


def test_a_failed_step_with_on_failure_abort_skips_the_rest(api: Recorder,
                                                           engine: Engine) -> None:
    api.fail("create", "networkpolicies", 403, 'networkpolicies is forbidden: User '
             '"system:serviceaccount:firebreak-system:firebreak" cannot create resource')
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE, CORDON, SCALE)])

    assert states(api) == {"isolate": "Failed", "cordon": "Skipped", "stop": "Skipped"}
    failed = status(api)["actions"][0]
    assert failed["message"].startswith("403 Forbidden: networkpolicies is forbidden")
    assert failed["revert"]["policy"] == "firebreak-quarantine-miner"  # decided, then failed
    assert condition(api, "Contained")["message"].startswith("step isolate did not complete")
    assert status(api)["phase"] == "Failed"
    # Nothing after the failure touched a workload.
    assert api.written("pods", "nodes", "deployments") == []
    # One write: the decision was replayable, so it went with its outcome.
    assert api.written("securityincidents") == [STATUS]


def test_a_failed_step_with_on_failure_continue_lets_the_next_run(api: Recorder,
                                                                 engine: Engine) -> None:
    api.fail("create", "networkpolicies", 403, "forbidden")
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook(
        "contain", step("isolate", "isolateNetwork", on_failure="continue"), SCALE)])

    assert states(api) == {"isolate": "Failed", "stop": "Applied"}
    assert condition(api, "Contained")["status"] == "True"
    assert condition(api, "Contained")["message"] == "1 of 2 steps applied"


def test_nothing_applied_is_not_contained(api: Recorder, engine: Engine) -> None:
    api.fail("create", "networkpolicies", 403, "forbidden")
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook(
        "contain", step("isolate", "isolateNetwork", on_failure="continue"))])
    assert condition(api, "Contained")["reason"] == "NothingApplied"
    assert status(api)["phase"] == "Failed"


def test_a_guardrail_refuses_a_cordon_that_leaves_too_few_nodes(
        api: Recorder, make_engine: Callable[..., Engine]) -> None:
    add_incident(api)
    engine = make_engine(config=OperatorConfig(namespace=OPERATOR_NS, min_schedulable_nodes=3))
    engine.reconcile(NS, "miner", [playbook("contain", CORDON)])
    assert states(api) == {"cordon": "Refused"}
    assert "leave 2 schedulable node(s), fewer than the minimum of 3" in \
        status(api)["actions"][0]["message"]
    assert api.written("nodes") == []


def test_a_protected_namespace_is_refused_before_anything_is_read(
        api: Recorder, make_engine: Callable[..., Engine]) -> None:
    add_app(api, namespace="payments")
    add_incident(api, target={"kind": "Pod", "namespace": "payments", "name": "web-5d9c-0"})
    engine = make_engine(config=OperatorConfig(namespace=OPERATOR_NS,
                                               protected_namespaces=frozenset({"payments"})))
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert states(api) == {"isolate": "Refused"}
    assert "namespace payments is protected" in status(api)["actions"][0]["message"]
    assert not any(path.startswith("/api/v1/namespaces/payments") for _, path in api.requests)


def test_dry_run_plans_every_step_and_changes_nothing(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE, CORDON, SCALE, mode="dryRun")])

    assert states(api) == {"isolate": "Planned", "cordon": "Planned", "stop": "Planned"}
    messages = [a["message"] for a in status(api)["actions"]]
    assert messages[2] == "would scale Deployment shop/web from 3 to 0 replicas"
    assert messages[1] == "would cordon node-a"
    assert condition(api, "Contained")["reason"] == "DryRun"
    assert status(api)["phase"] == "Suppressed"
    assert status(api)["mode"] == "dryRun"
    assert api.written() == ["create events shop/miner.00001", STATUS]
    assert all("revert" not in a for a in status(api)["actions"])


def test_resolution_reverts_applied_steps_in_reverse_order(api: Recorder, engine: Engine,
                                                           clock: Clock) -> None:
    add_incident(api)
    book = playbook("contain", ISOLATE, CORDON, SCALE)
    engine.reconcile(NS, "miner", [book])
    contained = len(api.writes)
    clock.advance(60)
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {
        "reason": "false positive", "by": "alice"}
    engine.reconcile(NS, "miner", [book])

    workload_writes = [w.what for w in api.writes[contained:]
                       if w.resource in ("deployments", "nodes", "pods", "networkpolicies")]
    assert workload_writes == [
        "patch deployments/scale shop/web",
        "patch nodes node-a",
        "patch pods shop/web-5d9c-0",
        "delete networkpolicies shop/firebreak-quarantine-miner",
    ]
    # Each step is marked Reverting (persisted) before its revert, Reverted after.
    recorded = [[a["state"] for a in w.body["status"]["actions"]]
                for w in api.writes[contained:] if w.resource == "securityincidents"]
    assert recorded == [
        ["Applied", "Applied", "Applied"],      # Resolved=False, Reverting
        ["Applied", "Applied", "Reverting"],
        ["Applied", "Applied", "Reverted"],
        ["Applied", "Reverting", "Reverted"],
        ["Applied", "Reverted", "Reverted"],
        ["Reverting", "Reverted", "Reverted"],
        ["Reverted", "Reverted", "Reverted"],
        ["Reverted", "Reverted", "Reverted"],  # Resolved=True
    ]
    assert status(api)["phase"] == "Resolved"
    assert condition(api, "Resolved")["message"] == "reverted 3 step(s): false positive"
    assert api.get("deployments", NS, "web")["spec"]["replicas"] == 3  # type: ignore[index]
    pod = api.get("pods", NS, "web-5d9c-0")
    assert pod is not None and not any(k.startswith("quarantine") for k in pod["metadata"]["labels"])
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None
    assert "unschedulable" not in api.get("nodes", None, "node-a")["spec"]  # type: ignore[index]
    reasons = [e["reason"] for e in api.all("events")]
    assert reasons[-5:] == ["ResolutionRequested", "StepReverted", "StepReverted",
                            "StepReverted", "Reverted"]


def test_a_revert_that_fails_is_revert_failed_and_the_rest_still_revert(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    book = playbook("contain", ISOLATE, CORDON, SCALE)
    engine.reconcile(NS, "miner", [book])
    api.fail("patch", "nodes", 403, 'nodes "node-a" is forbidden')
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "done"}
    engine.reconcile(NS, "miner", [book])

    assert states(api) == {"isolate": "Reverted", "cordon": "RevertFailed", "stop": "Reverted"}
    assert status(api)["actions"][1]["message"] == '403 Forbidden: nodes "node-a" is forbidden'
    assert condition(api, "Resolved")["reason"] == "RevertFailed"
    assert condition(api, "Resolved")["message"] == "could not revert cordon; see actions"
    assert status(api)["phase"] == "Failed"
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None

    # Once the API allows it, resolving again reverts what is left, and only that.
    api.failures.clear()
    before = len(api.writes)
    engine.reconcile(NS, "miner", [book])
    assert [w.what for w in api.effective("nodes", "pods", "deployments", "networkpolicies")
            if w in api.writes[before:]] == ["patch nodes node-a"]
    assert states(api) == {"isolate": "Reverted", "cordon": "Reverted", "stop": "Reverted"}
    assert status(api)["phase"] == "Resolved"


def test_resolution_before_the_steps_ran_skips_them(api: Recorder, engine: Engine) -> None:
    add_incident(api, resolution={"reason": "duplicate"})
    api.objects[("securityincidents", NS, "miner")]["status"] = {"actions": [
        {"step": "isolate", "action": "isolateNetwork", "state": "Pending"}]}
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert states(api) == {"isolate": "Skipped"}
    assert status(api)["actions"][0]["message"] == "skipped: the incident was resolved first"
    assert condition(api, "Resolved")["message"] == "reverted 0 step(s): duplicate"


def test_deletion_releases_what_was_applied_then_the_finalizer_without_writing_status(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    book = playbook("contain", ISOLATE, SCALE)
    engine.reconcile(NS, "miner", [book])
    before = len(api.writes)
    api.request("DELETE", f"/apis/firebreak.dev/v1alpha1/namespaces/{NS}/securityincidents/miner")
    engine.release(NS, "miner", incident(api))

    assert [w.what for w in api.writes[before:] if w.resource != "events"] == [
        "delete securityincidents shop/miner",
        "patch deployments/scale shop/web",
        "patch pods shop/web-5d9c-0",
        "delete networkpolicies shop/firebreak-quarantine-miner",
        "patch securityincidents shop/miner",  # the finalizer, last
    ]
    assert api.get("securityincidents", NS, "miner") is None
    assert api.get("deployments", NS, "web")["spec"]["replicas"] == 3  # type: ignore[index]


def test_a_revert_failing_for_good_on_deletion_keeps_the_finalizer_until_let_go(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    book = playbook("contain", ISOLATE, CORDON)
    engine.reconcile(NS, "miner", [book])
    api.fail("patch", "nodes", 403, 'nodes "node-a" is forbidden')

    with pytest.raises(RetryLater, match="could not revert cordon; the incident stays") as held:
        engine.release(NS, "miner", incident(api))

    assert held.value.delay == 60
    assert states(api) == {"isolate": "Reverted", "cordon": "RevertFailed"}
    assert condition(api, "Resolved")["reason"] == "RevertFailed"
    assert api.get("nodes", None, "node-a")["spec"]["unschedulable"] is True  # type: ignore[index]

    # A person decides to let go of the cordon's record: the next try releases it.
    api.objects[("securityincidents", NS, "miner")]["metadata"]["annotations"] = {
        "firebreak.dev/abandon-revert": "true"}
    engine.release(NS, "miner", incident(api))
    reasons = [e["reason"] for e in api.all("events", NS)]
    assert reasons[-1] == "RevertAbandoned"


def test_reconcile_ignores_an_incident_being_deleted(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    api.objects[("securityincidents", NS, "miner")]["metadata"]["deletionTimestamp"] = \
        "2025-03-01T12:00:00Z"
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert api.writes == []


def test_resolution_undoes_what_a_step_did_before_it_failed(api: Recorder,
                                                            engine: Engine) -> None:
    """isolateNetwork creates its policy, then cannot label the pod: the step failed
    half-way, and what it did (the policy) is undone on resolution like the rest."""
    api.fail("patch", "pods", 403, 'pods "web-5d9c-0" is forbidden')
    add_incident(api)
    book = playbook("contain", ISOLATE, SCALE)
    engine.reconcile(NS, "miner", [book])
    assert states(api) == {"isolate": "Failed", "stop": "Skipped"}
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is not None

    api.failures.clear()
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "done"}
    engine.reconcile(NS, "miner", [book])
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None
    assert states(api) == {"isolate": "Reverted", "stop": "Skipped"}
    assert status(api)["phase"] == "Resolved"


def test_a_step_that_failed_before_deciding_anything_has_nothing_to_revert(
        api: Recorder, engine: Engine) -> None:
    api.fail("list", "networkpolicies", 403, "networkpolicies is forbidden")
    add_incident(api)
    book = playbook("contain", ISOLATE)
    engine.reconcile(NS, "miner", [book])
    assert states(api) == {"isolate": "Failed"}
    assert "revert" not in status(api)["actions"][0]
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "done"}
    engine.reconcile(NS, "miner", [book])
    assert states(api) == {"isolate": "Failed"}
    assert condition(api, "Resolved")["message"] == "reverted 0 step(s): done"


def test_a_step_refused_while_applying_leaves_the_other_incidents_policy_alone(
        api: Recorder, engine: Engine) -> None:
    """A same-named incident in another namespace owns the quarantine policy: the
    step is refused without changing anything, and resolving does not delete it."""
    api.add({"kind": "NetworkPolicy", "metadata": {
        "name": "firebreak-quarantine-miner", "namespace": NS,
        "labels": {"firebreak.dev/incident": "miner",
                   "firebreak.dev/incident-namespace": "elsewhere"}},
        "spec": {"podSelector": {}}})
    add_incident(api)
    book = playbook("contain", ISOLATE)
    engine.reconcile(NS, "miner", [book])
    assert states(api) == {"isolate": "Failed"}
    assert "belongs to incident elsewhere/miner" in status(api)["actions"][0]["message"]
    assert "revert" not in status(api)["actions"][0]

    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "done"}
    engine.reconcile(NS, "miner", [book])
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is not None
    assert api.written("networkpolicies", "pods") == []


def test_holding_a_quarantine_passes_over_steps_that_hold_nothing(api: Recorder,
                                                                 engine: Engine) -> None:
    """A snapshot keeps no record to revert from: checking the quarantine beside it
    must not take that for a broken record (and call the isolation defeated)."""
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE, step(
        "evidence", "snapshot", storage="configMap"))])
    assert states(api) == {"isolate": "Applied", "evidence": "Applied"}
    engine.hold(NS, "miner")
    assert condition(api, "Isolated")["status"] == "True"
    assert condition(api, "Contained")["status"] == "True"
