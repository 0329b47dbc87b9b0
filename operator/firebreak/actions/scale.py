"""scaleDown: scale a Deployment or StatefulSet through its ``scale`` subresource.

The replica count before the change is recorded before anything is written, so a
revert (or a restart halfway) restores the count people had, not the one we set.
A revert leaves the workload alone if someone changed its scale in the meantime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..api import ActionName, TargetKind
from ..kube import path
from .base import Action, ActionContext, ActionRefused, Applied, Params, Prepared, Record, ref
from .workloads import top_workload

SCALABLE = ("Deployment", "StatefulSet")


class ScaleDownParams(Params):
    replicas: int = Field(default=0, ge=0, description="The replica count to scale to.")


class ScaleDownRecord(Record):
    """The workload and its replica count before the scale-down."""

    kind: Literal["Deployment", "StatefulSet"]
    namespace: str
    name: str
    previous_replicas: int = Field(ge=0)
    replicas: int = Field(ge=0)

    @property
    def where(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _scale(kind: str, namespace: str, name: str) -> str:
    """The path of a Deployment's or StatefulSet's scale."""
    return path("apps/v1", "deployments" if kind == "Deployment" else "statefulsets",
                namespace, name, "scale")


class ScaleDown(Action):
    name = ActionName.scale_down
    params_model = ScaleDownParams
    record_model = ScaleDownRecord

    def prepare(self, ctx: ActionContext, params: ScaleDownParams) -> Prepared:
        if ctx.target.kind is TargetKind.node:
            raise ActionRefused("scaleDown needs a workload or pod target, not a Node")
        workload = top_workload(ctx.kube, ctx.target)
        if workload is None or workload["kind"] not in SCALABLE:
            found = workload["kind"] if workload else "no controller"
            raise ActionRefused(
                f"{ctx.target.kind.value} {ctx.target.name} is managed by {found}; "
                f"scaleDown acts on a Deployment or StatefulSet")
        kind, meta = workload["kind"], workload["metadata"]
        current = ctx.kube.request("GET", _scale(kind, meta["namespace"], meta["name"]))[
            "spec"].get("replicas", 0)
        return Prepared(
            message=f"scale {kind} {meta['namespace']}/{meta['name']} from {current} "
                    f"to {params.replicas} replicas",
            objects=[ref(kind, meta["name"], meta["namespace"])],
            record=ScaleDownRecord(kind=kind, namespace=meta["namespace"], name=meta["name"],
                                   previous_replicas=current, replicas=params.replicas),
        )

    def apply(self, ctx: ActionContext, params: ScaleDownParams,
              record: ScaleDownRecord) -> Applied:
        scale = _scale(record.kind, record.namespace, record.name)
        if ctx.kube.request("GET", scale)["spec"].get("replicas", 0) != record.replicas:
            ctx.kube.request("PATCH", scale, {"spec": {"replicas": record.replicas}})
        return Applied(
            message=f"scaled {record.where} from {record.previous_replicas} to {record.replicas}",
            record=record)

    def revert(self, ctx: ActionContext, record: ScaleDownRecord) -> str:
        where = record.where
        scale = ctx.kube.read(_scale(record.kind, record.namespace, record.name))
        if scale is None:
            return f"{where} no longer exists; nothing to restore"
        current = scale["spec"].get("replicas", 0)
        if current == record.previous_replicas:
            return f"{where} already at {current} replicas"
        if current != record.replicas:
            return (f"left {where} at {current} replicas: changed by someone else since the "
                    f"scale-down to {record.replicas}")
        ctx.kube.request("PATCH", _scale(record.kind, record.namespace, record.name),
                         {"spec": {"replicas": record.previous_replicas}})
        return f"restored {where} to {record.previous_replicas} replicas"
