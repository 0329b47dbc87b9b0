"""The actions: the only code that changes workloads. One class per action."""

from __future__ import annotations

from ..api import ActionName
from .base import Action
from .label import Label
from .network import IsolateNetwork
from .nodes import CordonNode
from .notify import Notify
from .pods import DeletePod
from .scale import ScaleDown
from .snapshot import Snapshot


def registry() -> dict[ActionName, Action]:
    actions: list[Action] = [IsolateNetwork(), CordonNode(), ScaleDown(), Snapshot(), Label(),
                             DeletePod(), Notify()]
    return {a.name: a for a in actions}


__all__ = ["Action", "registry"]
