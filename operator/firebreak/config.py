"""The operator's configuration, read once at start-up and validated.

Every setting comes from an environment variable (``FIREBREAK_*``) or the matching
``firebreak run`` flag; a bad value stops the operator at start with a message that
names the setting, rather than surfacing later as a wrong decision.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "firebreak-system"
ALWAYS_PROTECTED = frozenset({"kube-system"})


class ConfigError(ValueError):
    pass


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(
        default=DEFAULT_NAMESPACE,
        description="The operator's own namespace: never acted on; playbooks here answer "
                    "incidents in every namespace.")
    protected_namespaces: frozenset[str] = Field(
        default=frozenset(),
        description="More namespaces no playbook may act on (kube-system always is).")
    min_schedulable_nodes: int = Field(
        default=1, ge=0,
        description="cordonNode refuses to leave fewer schedulable nodes than this.")
    min_healthy_replicas: int = Field(
        default=1, ge=0,
        description="deletePod refuses to leave a workload with fewer ready replicas than this.")
    snapshot_max_bytes: int = Field(
        default=900 * 1024, ge=1024, le=1024 * 1024,
        description="Largest evidence object (ConfigMap or Secret) a snapshot writes.")

    @field_validator("namespace")
    @classmethod
    def _namespace_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @property
    def guarded_namespaces(self) -> frozenset[str]:
        """Namespaces no action ever touches, whatever a playbook says."""
        return ALWAYS_PROTECTED | {self.namespace} | self.protected_namespaces


ENV = {
    "namespace": "FIREBREAK_NAMESPACE",
    "protected_namespaces": "FIREBREAK_PROTECTED_NAMESPACES",
    "min_schedulable_nodes": "FIREBREAK_MIN_SCHEDULABLE_NODES",
    "min_healthy_replicas": "FIREBREAK_MIN_HEALTHY_REPLICAS",
    "snapshot_max_bytes": "FIREBREAK_SNAPSHOT_MAX_BYTES",
}


def _default_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def load_config(env: Mapping[str, str] | None = None, **overrides: object) -> OperatorConfig:
    """Build the configuration from the environment and explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {"namespace": _default_namespace()}
    for field, var in ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if field == "protected_namespaces":
            values[field] = frozenset(n.strip() for n in raw.split(",") if n.strip())
        else:
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
