"""deletePod: delete the offending pod(s) so their controller starts clean ones.

A compromised container keeps whatever the attacker changed in it until it goes;
deleting the pod lets its controller replace it from the pristine image. It is
usually preceded by a ``snapshot`` step, since the pod's logs go with it.

Pods are deleted with a uid precondition taken when the step was prepared: a
StatefulSet's replacement has the same name, and a re-applied step must never
delete the fresh pod in place of the compromised one. A pod already gone or
already replaced counts as deleted.

``prepare`` reports how many ready replicas the owning workload would keep
(``healthyAfter``); the guardrails refuse the step when that is below
``minHealthyReplicas``. Deleting cannot be undone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..api import ActionName
from ..kube import Conflict, path
from .base import Action, ActionContext, Applied, Params, Prepared, Record, RecordPart, ref
from .workloads import is_ready, pods_of, target_pods, top_workload


class DeletePodParams(Params):
    grace_period_seconds: int | None = Field(
        default=None, ge=0, alias="gracePeriodSeconds",
        description="Seconds the containers get to stop; the pod's own setting when empty.")
    scope: Literal["pod", "workload"] = Field(
        default="pod",
        description="pod deletes the target pod; workload deletes every pod of the "
                    "target's workload.")


class PodToDelete(RecordPart):
    namespace: str
    name: str
    uid: str


class DeletePodRecord(Record):
    """The pods to delete, each with the uid it had when the step was prepared."""

    pods: list[PodToDelete]


class DeletePod(Action):
    name = ActionName.delete_pod
    params_model = DeletePodParams
    record_model = DeletePodRecord
    revertible = False

    def prepare(self, ctx: ActionContext, params: DeletePodParams) -> Prepared:
        pods = target_pods(ctx.kube, ctx.target, params.scope)
        record = DeletePodRecord(pods=[
            PodToDelete(namespace=p["metadata"]["namespace"], name=p["metadata"]["name"],
                        uid=p["metadata"]["uid"])
            for p in sorted(pods, key=lambda p: p["metadata"]["name"])
        ])
        names = ", ".join(p.name for p in record.pods) or "no pods"
        facts: dict[str, int] = {}
        warnings: list[str] = []
        message = f"delete {names}"
        # The top workload counts: a Deployment's ready replicas span its ReplicaSets.
        workload = top_workload(ctx.kube, ctx.target)
        if workload is None:
            warnings.append(f"Pod {ctx.target.name} has no controller: nothing will replace it")
        else:
            ready = {p["metadata"]["uid"] for p in pods_of(ctx.kube, workload) if is_ready(p)}
            deleted = {p["metadata"]["uid"] for p in pods if is_ready(p)}
            facts["healthyAfter"] = len(ready - deleted)
            message += (f"; {workload['kind']} {workload['metadata']['name']} keeps "
                        f"{facts['healthyAfter']} ready replica(s)")
        return Prepared(
            message=message,
            objects=[ref("Pod", p.name, p.namespace) for p in record.pods],
            record=record,
            facts=facts,
            warnings=warnings,
        )

    def apply(self, ctx: ActionContext, params: DeletePodParams,
              record: DeletePodRecord) -> Applied:
        deleted: list[str] = []
        gone: list[str] = []
        replaced: list[str] = []
        for pod in record.pods:
            options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                       "preconditions": {"uid": pod.uid}}
            if params.grace_period_seconds is not None:
                options["gracePeriodSeconds"] = params.grace_period_seconds
            try:
                existed = ctx.kube.remove(path("v1", "pods", pod.namespace, pod.name), options)
            except Conflict as exc:
                # A failed uid precondition: the name belongs to a replacement now. After
                # a retry, the pod may have gone by the first attempt, whose answer was
                # lost: either way it is gone, and its replacement is left running.
                (deleted if exc.retried else replaced).append(pod.name)
                continue
            (deleted if existed else gone).append(pod.name)
        parts = [f"deleted {', '.join(deleted) or 'no pods'}"]
        if gone:
            parts.append(f"{', '.join(gone)} already gone")
        if replaced:
            parts.append(f"{', '.join(replaced)} already replaced (the pod of that name is "
                         f"a new one; left running)")
        return Applied(message="; ".join(parts), record=None)
