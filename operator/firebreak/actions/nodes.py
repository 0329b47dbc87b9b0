"""cordonNode: stop new pods landing on the node(s) that run the target.

Only nodes that this incident cordoned are uncordoned on revert: a node that was
already cordoned (by a person or another incident) is left as it was. An
annotation on the node names the incident that cordoned it, so a revert never
undoes a cordon that someone else has since taken over.
"""

from __future__ import annotations

from ..api import ActionName, TargetKind
from ..kube import STRATEGIC_MERGE_PATCH, path
from .base import Action, ActionContext, ActionRefused, Applied, NoParams, Prepared, Record, ref
from .workloads import read_target, target_pods

CORDONED_BY = "firebreak.dev/cordoned-by"


def _cordon_mark(ctx: ActionContext) -> str:
    return f"{ctx.incident.namespace}/{ctx.incident.name}"


class CordonNodeRecord(Record):
    """The nodes this step cordons (not those that were cordoned already)."""

    nodes: list[str]


class CordonNode(Action):
    name = ActionName.cordon_node
    params_model = NoParams
    record_model = CordonNodeRecord

    def _target_nodes(self, ctx: ActionContext) -> list[str]:
        if ctx.target.kind is TargetKind.node:
            read_target(ctx.kube, ctx.target)
            return [ctx.target.name]
        scope = "pod" if ctx.target.kind is TargetKind.pod else "workload"
        names = {p["spec"].get("nodeName") for p in target_pods(ctx.kube, ctx.target, scope)}
        nodes = sorted(n for n in names if n)
        if not nodes:
            raise ActionRefused(f"{ctx.target.kind.value} {ctx.target.name} runs on no node yet")
        return nodes

    def prepare(self, ctx: ActionContext, params: NoParams) -> Prepared:
        wanted = self._target_nodes(ctx)
        nodes = {n["metadata"]["name"]: n for n in ctx.kube.items(path("v1", "nodes"))}
        schedulable = {name for name, n in nodes.items() if not n["spec"].get("unschedulable")}
        to_cordon = [n for n in wanted if n in schedulable]
        already = [n for n in wanted if n not in schedulable]
        message = f"cordon {', '.join(to_cordon) or 'nothing'}"
        if already:
            message += f" ({', '.join(already)} already cordoned, left as is)"
        return Prepared(
            message=message,
            objects=[ref("Node", n) for n in wanted],
            record=CordonNodeRecord(nodes=to_cordon),
            facts={"schedulableNodesAfter": len(schedulable) - len(to_cordon)},
        )

    def apply(self, ctx: ActionContext, params: NoParams, record: CordonNodeRecord) -> Applied:
        mark = _cordon_mark(ctx)
        for name in record.nodes:
            node = ctx.kube.read(path("v1", "nodes", name=name))
            if node is None:
                continue
            annotations = node["metadata"].get("annotations") or {}
            if node["spec"].get("unschedulable") and annotations.get(CORDONED_BY) == mark:
                continue
            ctx.kube.request("PATCH", path("v1", "nodes", name=name), content_type=
                             STRATEGIC_MERGE_PATCH, body={
                "metadata": {"annotations": {CORDONED_BY: mark}},
                "spec": {"unschedulable": True},
            })
        return Applied(message=f"cordoned {', '.join(record.nodes) or 'nothing'}",
                       record=record)

    def revert(self, ctx: ActionContext, record: CordonNodeRecord) -> str:
        mark = _cordon_mark(ctx)
        uncordoned, left = [], []
        for name in record.nodes:
            node = ctx.kube.read(path("v1", "nodes", name=name))
            if node is None:
                continue
            if (node["metadata"].get("annotations") or {}).get(CORDONED_BY) != mark:
                left.append(name)
                continue
            ctx.kube.request("PATCH", path("v1", "nodes", name=name), content_type=
                             STRATEGIC_MERGE_PATCH, body={
                "metadata": {"annotations": {CORDONED_BY: None}},
                "spec": {"unschedulable": None},
            })
            uncordoned.append(name)
        message = f"uncordoned {', '.join(uncordoned) or 'nothing'}"
        if left:
            message += f"; left {', '.join(left)} (no longer cordoned by this incident)"
        return message
