"""The documented limits of what a signal may carry, at their exact boundaries.

The limits are written here as numbers, not read from the module: they are what the
README promises (and what keeps an incident's spec small), so a change to one of
them must show up as a change here.
"""

from __future__ import annotations

import json

import pytest

from firebreak.api import Severity, Source
from firebreak.sources.signal import Signal, admissible, clip, json_size

KEY_LABELS = ("alertname", "severity", "priority", "rule", "namespace", "pod", "deployment",
              "statefulset", "daemonset", "job_name", "node", "instance", "job", "container",
              "k8s_ns_name", "k8s_pod_name", "source", "hostname")


def make(**fields: object) -> Signal:
    return Signal.model_validate({"source": Source.alertmanager, "fingerprint": "fp",
                                  "severity": Severity.high, "title": "t", **fields})


@pytest.mark.parametrize("code", [*range(0, 0x200), 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFD,
                                  0xFFFF, 0x10000, 0x1F600, 0x10FFFF])
def test_a_character_costs_what_ascii_only_json_makes_of_it(code: int) -> None:
    char = chr(code)
    cost = len(json.dumps(char)) - 2  # the quotes are counted once per string
    # Forty of them fit a limit of exactly their size, and not one byte less.
    exact = cost * 40 + 2
    assert clip(char * 40, exact) == char * 40
    cut = clip(char * 40, exact - 1)
    assert cut != char * 40 and json_size(cut) <= exact - 1
    # The cut keeps as many as fit beside the ellipsis (six bytes).
    assert cut == char * ((exact - 1 - 2 - 6) // cost) + "\u2026"


@pytest.mark.parametrize(("field", "limit"), [
    ("title", 1024), ("description", 8192), ("alert_name", 256)])
def test_each_text_field_keeps_exactly_its_limit(field: str, limit: int) -> None:
    fits = "é" * ((limit - 2) // 6) + "a" * ((limit - 2) % 6)  # non-ASCII: no shortcut
    assert json_size(fits) == limit
    assert getattr(make(**{field: fits}), field) == fits
    over = fits + "a"
    kept = getattr(make(**{field: over}), field)
    assert kept != over and kept.endswith("\u2026") and json_size(kept) <= limit


def test_a_fingerprint_of_128_bytes_is_kept_and_of_129_digested() -> None:
    assert make(fingerprint="f" * 126).fingerprint == "f" * 126
    assert make(fingerprint="f" * 127).fingerprint.startswith("sha256:")


def test_a_label_key_keeps_256_bytes_and_a_value_1024() -> None:
    key, value = "k" * 254, "v" * 1022
    assert make(labels={key: value}).labels == {key: value}
    longer = make(labels={key + "k": value + "v"}).labels
    ((cut_key, cut_value),) = longer.items()
    assert cut_key.endswith("\u2026") and json_size(cut_key) <= 256
    assert cut_value.endswith("\u2026") and json_size(cut_value) <= 1024


def test_at_most_62_labels_are_kept() -> None:
    labels = {f"l{i:02}": "v" for i in range(62)}
    assert make(labels=labels).labels == labels
    assert len(make(labels={**labels, "l99": "v"}).labels) == 62


def test_all_labels_together_keep_16_kibibytes() -> None:
    # Each label: key "k00" (5 bytes as JSON), a value of 1022 bytes, 2 more: 1029.
    labels = {f"k{i:02}": "v" * 1020 for i in range(15)}
    used = sum(json_size(k) + json_size(v) + 2 for k, v in labels.items())
    assert used == 15 * 1029
    room = 16 * 1024 - used - json_size("k15") - 2  # what the sixteenth value may take
    exact = {**labels, "k15": "v" * (room - 2)}
    assert make(labels=exact).labels == exact  # 16384 bytes exactly
    over = {**labels, "k15": "v" * (room - 1)}
    assert "k15" not in make(labels=over).labels


def test_every_well_known_label_is_kept_before_the_others() -> None:
    others = {f"a{i:03}": "v" for i in range(100)}
    kept = make(labels={**others, **{key: "x" for key in KEY_LABELS}}).labels
    assert set(KEY_LABELS) <= set(kept)
    assert len(kept) == 62
    # The rest in key order.
    assert sorted(set(kept) - set(KEY_LABELS)) == [f"a{i:03}" for i in range(62 - 18)]


def test_admissible_bounds_the_alert_name_and_the_target_problem() -> None:
    fields = admissible({"alert_name": "a" * 300, "target_problem": "p" * 9000,
                         "title": "t"})
    assert json_size(fields["alert_name"]) <= 256 and fields["alert_name"].endswith("\u2026")
    assert json_size(fields["target_problem"]) <= 8192


def test_admissible_leaves_the_callers_fields_alone() -> None:
    given = {"title": "t" * 2000, "labels": {"a": "b"}}
    admissible(given)
    assert given == {"title": "t" * 2000, "labels": {"a": "b"}}


def test_labels_with_a_value_of_the_wrong_type_are_left_for_validation() -> None:
    labels = {"a": 1, "b": "x" * 5000}
    assert admissible({"labels": labels})["labels"] == labels


def test_a_target_given_as_a_mapping_is_judged_by_its_name() -> None:
    fields = admissible({"target": {"kind": "Pod", "namespace": "shop", "name": "Web"}})
    assert fields["target"] is None
    assert 'Pod name "Web"' in fields["target_problem"]
    fine = {"kind": "Pod", "namespace": "shop", "name": "web"}
    assert admissible({"target": fine})["target"] == fine


def test_a_target_that_does_not_validate_is_left_for_validation() -> None:
    broken = {"kind": "Spaceship", "name": "Web"}
    assert admissible({"target": broken})["target"] == broken
