"""Configuration is validated at start with errors that name the setting."""

from __future__ import annotations

import pytest

from firebreak.config import ConfigError, load_config


def test_defaults_and_guarded_namespaces() -> None:
    config = load_config({"FIREBREAK_NAMESPACE": "sec"})
    assert config.namespace == "sec"
    assert config.guarded_namespaces == {"sec", "kube-system"}
    assert config.min_schedulable_nodes == 1


def test_environment_values_are_parsed() -> None:
    config = load_config({
        "FIREBREAK_PROTECTED_NAMESPACES": "vault, payments ,",
        "FIREBREAK_MIN_SCHEDULABLE_NODES": "3",
    })
    assert config.protected_namespaces == {"vault", "payments"}
    assert config.min_schedulable_nodes == 3
    assert {"vault", "payments", "kube-system"} <= config.guarded_namespaces


def test_flags_override_the_environment() -> None:
    config = load_config({"FIREBREAK_MIN_HEALTHY_REPLICAS": "2"}, min_healthy_replicas=5)
    assert config.min_healthy_replicas == 5


@pytest.mark.parametrize(("env", "named"), [
    ({"FIREBREAK_MIN_SCHEDULABLE_NODES": "many"}, "FIREBREAK_MIN_SCHEDULABLE_NODES"),
    ({"FIREBREAK_MIN_HEALTHY_REPLICAS": "-1"}, "FIREBREAK_MIN_HEALTHY_REPLICAS"),
    ({"FIREBREAK_SNAPSHOT_MAX_BYTES": "10"}, "FIREBREAK_SNAPSHOT_MAX_BYTES"),
    ({"FIREBREAK_NAMESPACE": "  "}, "FIREBREAK_NAMESPACE"),
])
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env)
