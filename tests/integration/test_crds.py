"""The CRDs, installed in a real kube-apiserver, do what the models promise.

Good objects are stored with the models' defaults filled in; bad ones are refused at
apply time with a message that says what is wrong; ``kubectl`` explains the fields
and prints the columns a person looks at first.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest

from firebreak import api
from tests.controlplane import LocalCluster
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

REMOVE = object()  # a change that deletes the field instead of setting it

PLAYBOOK_SPEC: dict[str, Any] = {
    "match": {"sources": ["falco"], "severity": "high"},
    "steps": [
        {"name": "quarantine", "action": "isolateNetwork"},
        {"name": "stop", "action": "scaleDown", "params": {"replicas": 0}},
    ],
}
INCIDENT_SPEC: dict[str, Any] = {
    "source": "falco",
    "severity": "critical",
    "title": "Shell spawned in a container",
    "alertName": "Terminal shell in container",
    "target": {"kind": "Pod", "namespace": "shop", "name": "web-1"},
    "labels": {"team": "payments"},
}


def run_kubectl(cluster: LocalCluster, *args: str, input: str | None = None
                ) -> subprocess.CompletedProcess[str]:
    """kubectl against the cluster, whatever its exit code; refusals are on stderr."""
    return subprocess.run(
        [str(cluster.binaries["kubectl"]), f"--kubeconfig={cluster.kubeconfig}", *args],
        input=input, capture_output=True, text=True, timeout=120,
    )


def changed(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with dotted paths set (or removed, for ``REMOVE``)."""
    result = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is REMOVE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return result


def manifest(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": api.API_VERSION, "kind": kind,
                       "metadata": {"name": name}, "spec": spec})


def apply(cluster: LocalCluster, namespace: str, kind: str, name: str,
          spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return run_kubectl(cluster, "apply", "-n", namespace, "-f", "-",
                       input=manifest(kind, name, spec))


def read(cluster: LocalCluster, namespace: str, resource: str, name: str) -> dict[str, Any]:
    stored: dict[str, Any] = json.loads(
        cluster.kubectl("get", resource, name, "-n", namespace, "-o", "json"))
    return stored


def header(cluster: LocalCluster, namespace: str, resource: str) -> list[str]:
    return cluster.kubectl("get", resource, "-n", namespace).splitlines()[0].split()


# --- good objects -------------------------------------------------------------------


@pytest.mark.usefixtures("crds")
def test_a_good_playbook_is_stored_with_the_model_defaults(
    cluster: LocalCluster, namespace: str
) -> None:
    result = apply(cluster, namespace, "ResponsePlaybook", "contain", PLAYBOOK_SPEC)
    assert result.returncode == 0, result.stderr

    stored = read(cluster, namespace, api.PLAYBOOK_PLURAL, "contain")["spec"]

    assert stored == api.ResponsePlaybookSpec.model_validate(PLAYBOOK_SPEC).to_api()
    assert stored["mode"] == "enforce"
    assert stored["priority"] == 0
    assert stored["release"] == "manual"
    assert stored["approval"] == {"policy": "automatic", "timeoutSeconds": 3600,
                                  "onTimeout": "reject"}
    # No default for onFailure: it depends on the action (abort, continue for notify),
    # and is decided at planning.
    assert [s.get("onFailure") for s in stored["steps"]] == [None, None]


@pytest.mark.usefixtures("crds")
def test_a_good_incident_is_stored_as_the_model_reads_it(
    cluster: LocalCluster, namespace: str
) -> None:
    node_incident = changed(INCIDENT_SPEC, {"target": {"kind": "Node", "name": "kwok-node-0"}})
    for name, spec in (("shell", INCIDENT_SPEC), ("node", node_incident)):
        result = apply(cluster, namespace, "SecurityIncident", name, spec)
        assert result.returncode == 0, result.stderr

        stored = read(cluster, namespace, api.INCIDENT_PLURAL, name)["spec"]

        assert stored == api.SecurityIncidentSpec.model_validate(spec).to_api()


@pytest.mark.usefixtures("crds")
def test_status_round_trips_through_the_status_subresource(
    cluster: LocalCluster, namespace: str
) -> None:
    assert apply(cluster, namespace, "SecurityIncident", "shell", INCIDENT_SPEC).returncode == 0
    status = {
        "phase": "Contained",
        "observedGeneration": 1,
        "conditions": [{"type": "Contained", "status": "True", "reason": "StepsApplied",
                        "lastTransitionTime": "2025-03-01T10:00:05Z"}],
        "playbook": {"name": "contain", "namespace": namespace},
        "mode": "enforce",
        "actions": [{"step": "quarantine", "action": "isolateNetwork", "state": "Applied",
                     "startedAt": "2025-03-01T10:00:01Z", "finishedAt": "2025-03-01T10:00:02Z",
                     "objects": [{"kind": "NetworkPolicy", "namespace": "shop",
                                  "name": "firebreak-quarantine"}],
                     "revert": {"policy": "firebreak-quarantine"}}],
        "timeline": [{"time": "2025-03-01T10:00:00Z", "reason": "Triaged",
                      "message": "playbook contain answers"}],
        "signalCount": 3,
        "firstSeen": "2025-03-01T10:00:00Z",
        "lastSeen": "2025-03-01T10:04:00Z",
        "timeToContainSeconds": 2.5,
    }

    cluster.kubectl("patch", api.INCIDENT_PLURAL, "shell", "-n", namespace,
                    "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))

    stored = read(cluster, namespace, api.INCIDENT_PLURAL, "shell")["status"]
    assert stored == api.SecurityIncidentStatus.model_validate(status).to_api()
    assert stored["conditions"][0]["message"] == ""  # the model's default, filled in


# --- bad objects --------------------------------------------------------------------

def _step(action: str, **params: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": "a", "action": action}
    if params:
        step["params"] = params
    return {"steps": [step]}


BAD_PLAYBOOKS = [
    ("no steps", {"steps": []}, "should have at least 1 items"),
    ("steps missing", {"steps": REMOVE}, "spec.steps: Required value"),
    ("duplicate step names",
     {"steps": [{"name": "a", "action": "snapshot"}, {"name": "a", "action": "label"}]},
     "step names must be unique within a playbook"),
    ("unknown action", {"steps": [{"name": "a", "action": "nuke"}]}, 'Unsupported value: "nuke"'),
    ("step name too long", {"steps": [{"name": "s" * 64, "action": "snapshot"}]},
     "spec.steps[0].name: Too long"),
    ("step without an action", {"steps": [{"name": "a"}]}, "spec.steps[0].action: Required value"),
    ("unknown mode", {"mode": "yolo"}, 'Unsupported value: "yolo"'),
    ("approval timeout of zero", {"approval": {"policy": "manual", "timeoutSeconds": 0}},
     "should be greater than or equal to 1"),
    ("In without values",
     {"match.labelSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}},
     "values must be non-empty for In and NotIn"),
    ("Exists with values",
     {"match.labelSelector": {"matchExpressions": [
         {"key": "team", "operator": "Exists", "values": ["a"]}]}},
     "empty for Exists and DoesNotExist"),
    ("unknown severity to match", {"match.severity": "bad"}, 'Unsupported value: "bad"'),
    ("misspelt field", {"stpes": []}, 'unknown field "spec.stpes"'),
    # Every step's params, checked at apply time (they once failed only at the first
    # incident, or were silently misread).
    ("scope cluster", _step("isolateNetwork", scope="cluster"), 'Unsupported value: "cluster"'),
    ("negative replicas", _step("scaleDown", replicas=-1),
     "params.replicas in body should be greater than or equal to 0"),
    ("replicas as a word", _step("scaleDown", replicas="zero"),
     "params.replicas in body must be of type integer"),
    ("unknown param", _step("isolateNetwork", bogus=1),
     'unknown field "spec.steps[0].params.bogus"'),
    ("dnsSelector as a list", _step("isolateNetwork", dnsSelector=["k8s-app=kube-dns"]),
     "params.dnsSelector in body must be of type object"),
    ("forensicsNamespace not a name", _step("isolateNetwork", forensicsNamespace="Not_A_Namespace!"),
     "params.forensicsNamespace in body should match"),
    ("allowDNS as a string", _step("isolateNetwork", allowDNS="no"),
     "params.allowDNS in body must be of type boolean"),
    ("detach as a string", _step("isolateNetwork", detach="yes"),
     "params.detach in body must be of type boolean"),
    ("a param of another action", _step("isolateNetwork", replicas=0),
     "params.replicas applies only to scaleDown"),
    ("label without labels", _step("label"), "a label step needs params.labels"),
    ("notify without a Secret", _step("notify", format="slack"),
     "a notify step needs params.secretRef"),
    ("a receiver's URL in the playbook", _step("notify", secretRef={"name": "s"},
                                               url="https://hooks.example/x"),
     'unknown field "spec.steps[0].params.url"'),
    ("notify params on another action", _step("label", labels={"a": "b"},
                                             secretRef={"name": "s"}),
     "params.secretRef applies only to notify"),
    ("unknown notification format", _step("notify", secretRef={"name": "s"}, format="teams"),
     'Unsupported value: "teams"'),
    ("a notification without events", {"notifications": [
        {"name": "n", "events": [], "secretRef": {"name": "s"}}]},
     "should have at least 1 items"),
    ("an unknown transition", {"notifications": [
        {"name": "n", "events": ["Exploded"], "secretRef": {"name": "s"}}]},
     'Unsupported value: "Exploded"'),
    ("duplicate notification names", {"notifications": [
        {"name": "n", "events": ["Contained"], "secretRef": {"name": "s"}},
        {"name": "n", "events": ["Resolved"], "secretRef": {"name": "t"}}]},
     "notification names must be unique within a playbook"),
]

BAD_INCIDENTS = [
    ("unknown severity", {"severity": "catastrophic"}, 'Unsupported value: "catastrophic"'),
    ("unknown source", {"source": "pagerduty"}, 'Unsupported value: "pagerduty"'),
    ("no title", {"title": REMOVE}, "spec.title: Required value"),
    ("empty title", {"title": ""}, "should be at least 1 chars long"),
    ("target without a name", {"target.name": REMOVE}, "spec.target.name: Required value"),
    ("target with an empty name", {"target.name": ""}, "should be at least 1 chars long"),
    ("unknown target kind", {"target.kind": "Service"}, 'Unsupported value: "Service"'),
    ("pod target without a namespace", {"target.namespace": REMOVE},
     "a target of any kind but Node needs a namespace"),
    ("pod target with an empty namespace", {"target.namespace": ""},
     "a target of any kind but Node needs a namespace"),
    ("node target with a namespace", {"target.kind": "Node"}, "a Node target has no namespace"),
    ("unknown approval decision", {"approval": {"decision": "maybe"}},
     'Unsupported value: "maybe"'),
    ("resolution without a reason", {"resolution": {"by": "alice"}},
     "spec.resolution.reason: Required value"),
    ("label with a number value", {"labels": {"replicas": 3}}, "spec.labels.replicas"),
]


def refusal(cluster: LocalCluster, namespace: str, kind: str,
            spec: dict[str, Any]) -> str:
    result = apply(cluster, namespace, kind, "bad", spec)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    return result.stderr


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(("changes", "message"),
                         [pytest.param(c, m, id=i) for i, c, m in BAD_PLAYBOOKS])
def test_a_bad_playbook_is_refused(cluster: LocalCluster, namespace: str,
                                   changes: dict[str, Any], message: str) -> None:
    error = refusal(cluster, namespace, "ResponsePlaybook", changed(PLAYBOOK_SPEC, changes))
    assert message in error


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(("changes", "message"),
                         [pytest.param(c, m, id=i) for i, c, m in BAD_INCIDENTS])
def test_a_bad_incident_is_refused(cluster: LocalCluster, namespace: str,
                                   changes: dict[str, Any], message: str) -> None:
    error = refusal(cluster, namespace, "SecurityIncident", changed(INCIDENT_SPEC, changes))
    assert message in error


# --- what kubectl shows -------------------------------------------------------------


@pytest.mark.usefixtures("crds")
def test_kubectl_explain_shows_the_field_descriptions(cluster: LocalCluster) -> None:
    def explained() -> str | None:
        # The OpenAPI document is published a moment after the CRD is established.
        result = run_kubectl(cluster, "explain", "securityincident.spec.target")
        return result.stdout if "The object the incident is about." in result.stdout else None

    text = wait_for(explained, timeout=60, what="kubectl explain to describe spec.target")
    assert "Namespace of the target; empty for a Node." in text
    assert "Name of the target object." in text

    params = run_kubectl(cluster, "explain", "responseplaybook.spec.steps.params").stdout
    for name, field in api.StepParams.model_fields.items():
        assert f"{field.alias or name}\t<" in params, name
    assert "scaleDown: the replica count to scale to (default 0)." in params


@pytest.mark.usefixtures("crds")
def test_kubectl_get_prints_the_columns(cluster: LocalCluster, namespace: str) -> None:
    assert apply(cluster, namespace, "ResponsePlaybook", "contain", PLAYBOOK_SPEC).returncode == 0
    assert apply(cluster, namespace, "SecurityIncident", "shell", INCIDENT_SPEC).returncode == 0
    cluster.kubectl("patch", api.INCIDENT_PLURAL, "shell", "-n", namespace,
                    "--subresource=status", "--type=merge", "-p", json.dumps({"status": {
                        "phase": "Containing", "playbook": {"name": "contain"},
                        "signalCount": 2, "conditions": [{
                            "type": "Isolated", "status": "False", "reason": "IsolationDefeated",
                            "message": "web-1: ingress from anywhere",
                            "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}))

    assert header(cluster, namespace, "si") == [
        "NAME", "PHASE", "SEVERITY", "TARGET", "ISOLATED", "PLAYBOOK", "SIGNALS", "AGE"]
    row = cluster.kubectl("get", "si", "shell", "-n", namespace, "--no-headers").split()
    assert row[:7] == ["shell", "Containing", "critical", "web-1", "False", "contain", "2"]

    assert header(cluster, namespace, "rpb") == [
        "NAME", "MODE", "PRIORITY", "STEPS", "READY", "AGE"]
    row = cluster.kubectl("get", "rpb", "contain", "-n", namespace, "--no-headers").split()
    # The API server prints one value per column: the first step's name, not every one.
    assert row[:4] == ["contain", "enforce", "0", "quarantine"]


@pytest.mark.usefixtures("crds")
def test_the_firebreak_category_lists_both_kinds(cluster: LocalCluster, namespace: str) -> None:
    assert apply(cluster, namespace, "ResponsePlaybook", "contain", PLAYBOOK_SPEC).returncode == 0
    assert apply(cluster, namespace, "SecurityIncident", "shell", INCIDENT_SPEC).returncode == 0

    names = cluster.kubectl("get", "firebreak", "-n", namespace, "-o", "name").split()

    assert sorted(names) == [f"responseplaybook.{api.GROUP}/contain",
                             f"securityincident.{api.GROUP}/shell"]
