"""The operator's configuration, read once at start-up and validated.

Every setting comes from an environment variable (``FIREBREAK_<NAME>``) or the
matching ``firebreak run --<name>`` flag (flags win); both are derived from the
fields below, so the two never drift apart. A bad value stops the operator at
start with a message that names the setting, rather than surfacing later as a
wrong decision.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "firebreak-system"
ALWAYS_PROTECTED = frozenset({"kube-system"})
SET_FIELDS = frozenset({"protected_namespaces"})
# Fields where an empty value means "off" rather than "unset".
EMPTY_MEANS_OFF = frozenset({"webhook_address", "metrics_address"})


class ConfigError(ValueError):
    pass


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- response
    namespace: str = Field(
        default=DEFAULT_NAMESPACE,
        description="The operator's own namespace: never acted on; playbooks here answer "
                    "incidents in every namespace (default: the pod's namespace).")
    protected_namespaces: frozenset[str] = Field(
        default=frozenset(),
        description="Comma-separated namespaces no playbook may act on (kube-system and the "
                    "operator's namespace always are).")
    min_schedulable_nodes: int = Field(
        default=1, ge=0,
        description="cordonNode refuses to leave fewer schedulable nodes than this.")
    min_healthy_replicas: int = Field(
        default=1, ge=0,
        description="deletePod refuses to leave a workload with fewer ready replicas than this.")
    hold_interval: float = Field(
        default=30.0, ge=0,
        description="Seconds between checks that each quarantine still holds (pods that lost "
                    "their label, new pods of a quarantined workload); 0 turns the periodic "
                    "check off. NetworkPolicy changes are answered at once, whatever this is.")
    budget_per_minute: int = Field(
        default=60, ge=0,
        description="Incidents that may begin acting per minute, cluster-wide; beyond it the "
                    "next waits (phase Throttled) until a slot frees. 0: no limit. Playbooks "
                    "may set a lower one (spec.budget.perMinute).")
    lease_seconds: float = Field(
        default=15.0, ge=0,
        description="Seconds a replica's Lease (coordination.k8s.io) lasts without renewal: "
                    "after a replica dies, another one takes over its incidents within about "
                    "this long. 0 turns leader election off (only for a single replica).")
    workers: int = Field(
        default=16, ge=1, le=256,
        description="Incidents one replica works on at the same time.")
    snapshot_max_bytes: int = Field(
        default=900 * 1024, ge=1024, le=1024 * 1024,
        description="Largest evidence object (ConfigMap or Secret) a snapshot writes.")

    # --- intake: the webhook
    webhook_address: str = Field(
        default="0.0.0.0:8080",
        description="host:port of the alert webhook (/alertmanager, /falco, /signals, /healthz, "
                    "/readyz); "
                    "empty disables it.")
    webhook_auth: Literal["token", "none"] = Field(
        default="token",
        description="token: every POST needs 'Authorization: Bearer <token>'; none turns "
                    "authentication off (not for production).")
    webhook_token_file: Path | None = Field(
        default=None, description="File holding the bearer token (re-read when it changes).")
    webhook_token_secret: str | None = Field(
        default=None,
        description="Secret in the operator's namespace holding the token under key 'token' "
                    "(used when no token file is given).")
    webhook_tls_cert_file: Path | None = Field(
        default=None, description="Serve HTTPS with this certificate (PEM).")
    webhook_tls_key_file: Path | None = Field(
        default=None, description="The private key of the TLS certificate (PEM).")
    webhook_body_limit: int = Field(
        default=1024 * 1024, ge=1024,
        description="Largest request body accepted, in bytes; larger ones get 413.")
    webhook_answer_seconds: float = Field(
        default=5.0, gt=0, le=60,
        description="Longest the webhook waits for the API server to store a payload's "
                    "incidents (and for a free request slot) before answering 503 with "
                    "Retry-After.")
    webhook_read_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="A client must send its whole request body within this many seconds; "
                    "slower ones get 408.")
    webhook_max_requests: int = Field(
        default=32, ge=1,
        description="Requests the webhook handles at once; more wait for a slot, then get 503.")

    # --- seen and heard
    metrics_address: str = Field(
        default="0.0.0.0:8082",
        description="host:port where Prometheus metrics are served (/metrics); empty "
                    "disables them.")

    # --- intake: pull sources
    prometheus_url: str | None = Field(
        default=None, description="Poll this Prometheus for firing alerts; unset disables polling.")
    prometheus_query: str = Field(
        default='ALERTS{alertstate="firing"}', description="The PromQL query polled.")
    prometheus_interval: float = Field(
        default=30.0, gt=0, description="Seconds between Prometheus polls.")
    trivy_min_severity: Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"] = Field(
        default="CRITICAL",
        description="A VulnerabilityReport opens an incident for findings of this severity "
                    "or worse.")
    trivy_require_fix: bool = Field(
        default=True, description="Count only findings that have a fixed version.")
    trivy_min_count: int = Field(
        default=1, ge=1, description="How many such findings open an incident.")
    trivy_secret_min_severity: Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"] = Field(
        default="HIGH",
        description="An ExposedSecretReport opens an incident for a secret of this severity "
                    "or worse.")
    trivy_config_min_severity: Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"] = Field(
        default="CRITICAL",
        description="A ConfigAuditReport opens an incident for a failed check of this "
                    "severity or worse.")

    @field_validator("namespace")
    @classmethod
    def _namespace_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("webhook_address", "metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value:
            _, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError("must be host:port, e.g. 0.0.0.0:8080")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> OperatorConfig:
        if (self.webhook_tls_cert_file is None) != (self.webhook_tls_key_file is None):
            raise ValueError("webhook_tls_cert_file and webhook_tls_key_file go together")
        return self

    @property
    def guarded_namespaces(self) -> frozenset[str]:
        """Namespaces no action ever touches, whatever a playbook says."""
        return ALWAYS_PROTECTED | {self.namespace} | self.protected_namespaces

    @property
    def webhook_host_port(self) -> tuple[str, int]:
        host, _, port = self.webhook_address.rpartition(":")
        return host.strip("[]"), int(port)


def env_name(field: str) -> str:
    return f"FIREBREAK_{field.upper()}"


def flag_name(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def _default_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def _parse(field: str, raw: str) -> object:
    if field in SET_FIELDS:
        return frozenset(n.strip() for n in raw.split(",") if n.strip())
    return raw


def load_config(env: Mapping[str, str] | None = None,
                overrides: Mapping[str, str | None] | None = None) -> OperatorConfig:
    """Build the configuration from the environment and flags (raw strings, flags win)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {"namespace": _default_namespace()}
    for field in OperatorConfig.model_fields:
        raw = env.get(env_name(field))
        if raw is not None and (raw != "" or field in EMPTY_MEANS_OFF):
            values[field] = _parse(field, raw)
    for field, raw in (overrides or {}).items():
        if raw is not None:
            values[field] = _parse(field, raw)
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            (f"{env_name(str(e['loc'][0]))} / {flag_name(str(e['loc'][0]))}: {e['msg']}"
             if e["loc"] else e["msg"])
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
