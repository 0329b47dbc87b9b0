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
    config = load_config({"FIREBREAK_MIN_HEALTHY_REPLICAS": "2"},
                         overrides={"min_healthy_replicas": "5"})
    assert config.min_healthy_replicas == 5


@pytest.mark.parametrize(("env", "named"), [
    ({"FIREBREAK_MIN_SCHEDULABLE_NODES": "many"}, "FIREBREAK_MIN_SCHEDULABLE_NODES"),
    ({"FIREBREAK_MIN_HEALTHY_REPLICAS": "-1"}, "FIREBREAK_MIN_HEALTHY_REPLICAS"),
    ({"FIREBREAK_SNAPSHOT_MAX_BYTES": "10"}, "FIREBREAK_SNAPSHOT_MAX_BYTES"),
    ({"FIREBREAK_NAMESPACE": "  "}, "FIREBREAK_NAMESPACE"),
    ({"FIREBREAK_WEBHOOK_ADDRESS": "8080"}, "--webhook-address"),
    ({"FIREBREAK_WEBHOOK_AUTH": "maybe"}, "FIREBREAK_WEBHOOK_AUTH"),
    ({"FIREBREAK_WEBHOOK_BODY_LIMIT": "12"}, "FIREBREAK_WEBHOOK_BODY_LIMIT"),
    ({"FIREBREAK_WEBHOOK_TLS_CERT_FILE": "/tls.crt"}, "go together"),
    ({"FIREBREAK_PROMETHEUS_INTERVAL": "0"}, "FIREBREAK_PROMETHEUS_INTERVAL"),
    ({"FIREBREAK_TRIVY_MIN_SEVERITY": "SEVERE"}, "FIREBREAK_TRIVY_MIN_SEVERITY"),
])
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env)


def test_webhook_can_be_disabled_and_has_safe_defaults() -> None:
    config = load_config({})
    assert config.webhook_auth == "token"
    assert config.webhook_body_limit == 1024 * 1024
    assert config.webhook_host_port == ("0.0.0.0", 8080)
    assert load_config({"FIREBREAK_WEBHOOK_ADDRESS": ""}).webhook_address == ""


def test_every_setting_is_a_flag() -> None:
    from firebreak.cli import parser
    from firebreak.config import OperatorConfig

    args = parser().parse_args(["run", "--prometheus-url", "http://127.0.0.1:9090",
                                "--trivy-min-count", "3"])
    assert args.prometheus_url == "http://127.0.0.1:9090"
    config = load_config({}, overrides={f: getattr(args, f) for f in OperatorConfig.model_fields})
    assert config.trivy_min_count == 3


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from firebreak.config import OperatorConfig, env_name, flag_name

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f for f in OperatorConfig.model_fields
               if f"`{env_name(f)}` | `{flag_name(f)}`" not in readme]
    assert missing == []
