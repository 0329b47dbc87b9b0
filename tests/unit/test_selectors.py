"""Label selectors, evaluated and rendered as Kubernetes does, table-driven.

Each operator is checked in both directions (a selector that selects, and one
that does not) and against a label that is missing, since "matches everything"
and "matches nothing" are both easy bugs to ship.
"""

from __future__ import annotations

from typing import Any

import pytest

from firebreak.selectors import selects, to_query

LABELS = {"app": "web", "env": "prod", "tier": "front"}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    req: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        req["values"] = list(values)
    return {"matchExpressions": [req]}


@pytest.mark.parametrize(("selector", "expected"), [
    pytest.param({}, True, id="empty-selects-all"),
    pytest.param({"matchLabels": None, "matchExpressions": None}, True, id="null-parts"),
    pytest.param({"matchLabels": {"app": "web"}}, True, id="label-equal"),
    pytest.param({"matchLabels": {"app": "web", "env": "prod"}}, True, id="labels-all-equal"),
    pytest.param({"matchLabels": {"app": "web", "env": "dev"}}, False, id="labels-one-differs"),
    pytest.param({"matchLabels": {"owner": "x"}}, False, id="label-missing"),
    pytest.param(expr("env", "In", "prod", "staging"), True, id="in-listed"),
    pytest.param(expr("env", "In", "dev", "staging"), False, id="in-not-listed"),
    pytest.param(expr("owner", "In", "prod"), False, id="in-missing-key"),
    pytest.param(expr("env", "In"), False, id="in-no-values"),
    pytest.param(expr("env", "NotIn", "dev"), True, id="notin-not-listed"),
    pytest.param(expr("env", "NotIn", "prod", "dev"), False, id="notin-listed"),
    pytest.param(expr("owner", "NotIn", "prod"), True, id="notin-missing-key"),
    pytest.param(expr("tier", "Exists"), True, id="exists"),
    pytest.param(expr("owner", "Exists"), False, id="exists-missing"),
    pytest.param(expr("owner", "DoesNotExist"), True, id="doesnotexist"),
    pytest.param(expr("tier", "DoesNotExist"), False, id="doesnotexist-present"),
    pytest.param({"matchLabels": {"app": "web"}, **expr("owner", "Exists")}, False,
                 id="labels-and-expressions-all-required"),
    pytest.param({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]},
                                       {"key": "tier", "operator": "NotIn", "values": ["front"]}]},
                 False, id="every-expression-required"),
])
def test_selects(selector: dict[str, Any], expected: bool) -> None:
    assert selects(selector, LABELS) is expected


@pytest.mark.parametrize(("operator", "values"), [
    ("In", ["web"]), ("NotIn", ["web"]), ("Exists", []), ("DoesNotExist", []),
])
def test_each_operator_tells_a_present_key_from_a_missing_one(operator: str, values: list[str]) -> None:
    # Catches an operator read as its opposite: exactly one of the two label sets is selected.
    selector = expr("app", operator, *values)
    with_value, without_key = {"app": "web"}, {"other": "x"}
    expected = {"In": (True, False), "NotIn": (False, True), "Exists": (True, False),
                "DoesNotExist": (False, True)}[operator]
    assert (selects(selector, with_value), selects(selector, without_key)) == expected


@pytest.mark.parametrize(("selector", "query"), [
    pytest.param(None, "", id="none"),
    pytest.param({}, "", id="empty"),
    pytest.param({"matchLabels": {"tier": "front", "app": "web"}}, "app=web,tier=front", id="labels-sorted"),
    pytest.param(expr("env", "In", "prod", "staging"), "env in (prod,staging)", id="in"),
    pytest.param(expr("env", "NotIn", "dev"), "env notin (dev)", id="notin"),
    pytest.param(expr("owner", "Exists"), "owner", id="exists"),
    pytest.param(expr("owner", "DoesNotExist"), "!owner", id="doesnotexist"),
    pytest.param({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["prod"]},
        {"key": "owner", "operator": "DoesNotExist"}]},
        "app=web,env in (prod),!owner", id="labels-then-expressions-in-order"),
    pytest.param({"matchLabels": None, "matchExpressions": None}, "", id="null-parts"),
])
def test_to_query(selector: dict[str, Any] | None, query: str) -> None:
    assert to_query(selector) == query
