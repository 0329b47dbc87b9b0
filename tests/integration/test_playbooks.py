"""The ready playbooks in playbooks/ are accepted by the API server and plan cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firebreak.actions import registry
from firebreak.api import ResponsePlaybookSpec, SecurityIncidentSpec
from firebreak.planning import plan
from tests.controlplane import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
PLAYBOOKS = sorted((Path(__file__).resolve().parents[2] / "playbooks").glob("*.yaml"))
ACTIONS = registry()


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.stem)
def test_playbook_is_valid(path: Path, cluster: LocalCluster) -> None:
    text = path.read_text()
    assert text.startswith("#"), "each ready playbook explains itself in a comment"
    cluster.kubectl("apply", "-f", str(path.parents[1] / "manifests" / "namespace.yaml"))
    cluster.kubectl("apply", "--dry-run=server", "-f", str(path))  # schema and CEL rules
    spec = ResponsePlaybookSpec.model_validate(yaml.safe_load(text)["spec"])
    target = ({"kind": "Node", "name": "node-1"} if path.stem == "compromised-node"
              else {"kind": "Pod", "namespace": "shop", "name": "web-1"})
    incident = SecurityIncidentSpec.model_validate(
        {"source": "manual", "severity": "critical", "title": "t", "target": target})
    steps = plan(incident, spec, lambda action, params: ACTIONS[action].parse(dict(params)))
    assert [s.name for s in steps] == [s.name for s in spec.steps]


def test_there_are_at_least_three() -> None:
    assert len(PLAYBOOKS) >= 3
