"""What a signal may carry: valid Unicode, bounded strings, names Kubernetes can hold.

The bounds are measured as the JSON a writer produces with every non-ASCII character
escaped (the largest form), so that an incident's spec, and Kopf's copy of it in an
annotation, always fit.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firebreak.api import Severity, Source, Target, TargetKind
from firebreak.sources.alertmanager import AlertmanagerAlert, signal_from_alert
from firebreak.sources.falco import FalcoEvent, signal_from_falco
from firebreak.sources.signal import (
    ALERT_NAME_LIMIT,
    DESCRIPTION_LIMIT,
    FINGERPRINT_LIMIT,
    LABEL_COUNT_LIMIT,
    LABEL_KEY_LIMIT,
    LABEL_VALUE_LIMIT,
    LABELS_LIMIT,
    TITLE_LIMIT,
    Signal,
    clean,
    clip,
    fingerprint_of,
    incident_name,
    json_size,
    labels_fingerprint,
    name_problem,
)
from tests.unit.test_signal import DNS_LABEL

ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=3000)


def make(**fields: object) -> Signal:
    return Signal.model_validate({"source": Source.alertmanager, "fingerprint": "fp",
                                  "severity": Severity.high, "title": "t", **fields})


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("short", 100, "short"),
    ("x" * 20, 10, "xx\u2026"),                  # 2 quotes + 2 + 6 for the ellipsis
    ('"' * 10, 10, '"' + "\u2026"),              # a quote escapes to two bytes
    ("é" * 10, 20, "é" * 2 + "\u2026"),          # \u00e9: six bytes each
    ("\U0001F600" * 5, 30, "\U0001F600" + "\u2026"),  # a surrogate pair: twelve bytes
])
def test_clip_counts_the_escaped_json(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected
    assert json_size(clip(text, limit)) <= limit


@given(text=ANY_TEXT, limit=st.integers(min_value=10, max_value=2000))
def test_clip_never_exceeds_its_limit_and_keeps_what_fits(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    assert json_size(clipped) <= limit
    clipped.encode()  # valid Unicode
    if json_size(clean(text)) <= limit:
        assert clipped == clean(text)
    else:
        assert clipped.endswith("\u2026") and clean(text).startswith(clipped[:-1])


def test_a_delete_character_costs_its_escape() -> None:
    # DEL (0x7f) is ASCII but JSON writes it as \u007f: found by the property above.
    text = "\x1f\x1f\x1f\x7f\x1f"
    clipped = clip(text, 27)
    assert json_size(clipped) <= 27 and clipped == "\x1f\x1f\x1f\u2026"


def test_lone_surrogates_become_replacement_characters() -> None:
    assert clean("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert clean("\U0001F600") == "\U0001F600"  # a real astral character stays


def test_fingerprints_never_fail_on_lone_surrogates() -> None:
    assert fingerprint_of("\ud800") != fingerprint_of("\ufffd")
    assert len(labels_fingerprint({"pod": "\ud800"})) == 16


def test_a_long_fingerprint_is_replaced_by_its_digest_never_cut() -> None:
    one, other = make(fingerprint="f" * 500 + "1"), make(fingerprint="f" * 500 + "2")
    assert one.fingerprint.startswith("sha256:") and other.fingerprint.startswith("sha256:")
    assert one.fingerprint != other.fingerprint
    assert make(fingerprint="f" * 100).fingerprint == "f" * 100


def test_labels_keep_the_well_known_keys_first() -> None:
    many = {f"a{i:03}": "v" * 1000 for i in range(100)}
    kept = make(labels={**many, "severity": "critical", "pod": "web-1",
                        "alertname": "CryptoMiner"}).labels
    assert {"severity", "pod", "alertname"} <= set(kept)
    assert len(kept) <= LABEL_COUNT_LIMIT
    assert sum(json_size(k) + json_size(v) + 2 for k, v in kept.items()) <= LABELS_LIMIT


@settings(max_examples=200, deadline=None)
@given(title=ANY_TEXT, description=ANY_TEXT, alert_name=ANY_TEXT, fingerprint=ANY_TEXT,
       labels=st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=80))
def test_every_string_of_a_signal_is_bounded(title: str, description: str, alert_name: str,
                                             fingerprint: str, labels: dict[str, str]) -> None:
    signal = make(title=title or "t", description=description, alert_name=alert_name,
                  fingerprint=fingerprint or "fp", labels=labels)
    assert json_size(signal.title) <= TITLE_LIMIT
    assert json_size(signal.description or "") <= DESCRIPTION_LIMIT
    assert json_size(signal.alert_name or "") <= ALERT_NAME_LIMIT
    assert json_size(signal.fingerprint) <= FINGERPRINT_LIMIT
    for key, value in signal.labels.items():
        assert json_size(key) <= LABEL_KEY_LIMIT and json_size(value) <= LABEL_VALUE_LIMIT
    json.dumps(signal.model_dump(mode="json"), ensure_ascii=False).encode()  # valid Unicode
    assert DNS_LABEL.fullmatch(incident_name(signal))


@pytest.mark.parametrize(("kind", "namespace", "name", "problem"), [
    (TargetKind.pod, "shop", ".", 'Pod name "."'),
    (TargetKind.pod, "shop", "..", 'Pod name ".."'),
    (TargetKind.deployment, "shop", "Web", 'Deployment name "Web"'),
    (TargetKind.pod, "shop", "web_1", 'Pod name "web_1"'),
    (TargetKind.pod, "shop", "wéb", 'Pod name "w\\u00e9b"'),
    (TargetKind.pod, "shop", "a" * 254, 'Pod name "aaa'),
    (TargetKind.pod, "shop", "web-", 'Pod name "web-"'),
    (TargetKind.pod, "UPPER_case", "web", 'namespace "UPPER_case"'),
    (TargetKind.pod, "%2e%2e", "web", 'namespace "%2e%2e"'),
    (TargetKind.pod, "a" * 64, "web", 'namespace "aaa'),
    (TargetKind.pod, "a.b", "web", 'namespace "a.b"'),
    (TargetKind.node, None, "Node-1", 'Node name "Node-1"'),
])
def test_names_kubernetes_cannot_hold(kind: TargetKind, namespace: str | None, name: str,
                                      problem: str) -> None:
    found = name_problem(Target(kind=kind, namespace=namespace, name=name))
    assert found is not None and found.startswith(problem)
    assert len(found) < 300  # the name quoted in it is clipped too


@pytest.mark.parametrize(("kind", "namespace", "name"), [
    (TargetKind.pod, "shop", "web-5d9c-0"), (TargetKind.pod, "12", "kubecon"),
    (TargetKind.deployment, "a" * 63, "a" * 253), (TargetKind.node, None, "ip-10-0-0-1.ec2.internal"),
])
def test_names_kubernetes_can_hold(kind: TargetKind, namespace: str | None, name: str) -> None:
    assert name_problem(Target(kind=kind, namespace=namespace, name=name)) is None


@pytest.mark.parametrize(("labels", "problem"), [
    ({"namespace": "shop", "job_name": "."}, 'Job name "."'),
    ({"namespace": "shop", "statefulset": "."}, 'StatefulSet name "."'),
    ({"namespace": "shop", "pod": ".."}, 'Pod name ".."'),
    ({"namespace": "UPPER_case", "pod": "web-1"}, 'namespace "UPPER_case"'),
    ({"namespace": "shop", "pod": "\ud800"}, 'Pod name "\\ufffd"'),
])
def test_an_alert_with_an_impossible_target_keeps_its_labels(
        labels: dict[str, str], problem: str) -> None:
    signal = signal_from_alert(AlertmanagerAlert.model_validate(
        {"status": "firing", "labels": {"alertname": "X", **labels}}))
    assert signal.target is None
    assert signal.target_problem is not None and signal.target_problem.startswith(problem)
    assert signal.labels["alertname"] == "X"


def test_a_falco_namespace_given_as_a_number_is_a_name() -> None:
    event = FalcoEvent.model_validate({"output": "x", "priority": "Critical", "rule": "r",
                                       "output_fields": {"k8s.ns.name": 12,
                                                         "k8s.pod.name": "web-1"}})
    assert signal_from_falco(event).target == Target(kind=TargetKind.pod, namespace="12",
                                                     name="web-1")
