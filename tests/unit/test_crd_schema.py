"""The CRDs in ``crds/`` and the pydantic models in ``firebreak.api`` must agree.

The models are what the operator reads and writes; the CRDs are what the API server
enforces and what ``kubectl explain`` shows. Neither is generated from the other (the
CRDs carry CEL rules, list types, defaults and printer columns that pydantic has no
words for), so this module walks both schemas side by side and reports every place
where they differ: a field on one side only, another required list, enum, type,
format, bound or default, or a description that drifted from the model's.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from firebreak import api
from firebreak.actions import registry

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
PLAYBOOK_CRD = f"{api.PLAYBOOK_PLURAL}.{api.GROUP}.yaml"
INCIDENT_CRD = f"{api.INCIDENT_PLURAL}.{api.GROUP}.yaml"

# Which model describes each top-level part of each custom resource.
MODELS: dict[str, dict[str, type[BaseModel]]] = {
    PLAYBOOK_CRD: {"spec": api.ResponsePlaybookSpec, "status": api.ResponsePlaybookStatus},
    INCIDENT_CRD: {"spec": api.SecurityIncidentSpec, "status": api.SecurityIncidentStatus},
}

# Keywords compared as they are: pydantic and OpenAPI v3 spell them the same way.
SAME_KEYWORDS = ("type", "format", "pattern", "minLength", "maxLength",
                 "minimum", "maximum", "minItems", "maxItems")

Schema = dict[str, Any]


def load_crd(file_name: str) -> Schema:
    return yaml.safe_load((CRD_DIR / file_name).read_text())


def served_version(crd: Schema) -> Schema:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    return version


def crd_schema(file_name: str) -> Schema:
    return served_version(load_crd(file_name))["schema"]["openAPIV3Schema"]


def model_schema(model: type[BaseModel]) -> Schema:
    return model.model_json_schema(by_alias=True, mode="validation")


# --- reading pydantic's JSON schema ------------------------------------------------


def resolve(node: Schema, defs: Schema) -> Schema:
    """The schema of a value, whatever pydantic wrapped it in.

    Follows ``$ref`` into ``$defs`` and unwraps ``Optional[X]`` (``anyOf: [X, null]``),
    keeping the keywords written next to the wrapper (description, default), which
    describe the field rather than the referenced type. ``null`` itself has no
    counterpart in the CRD: an optional field is simply absent there.
    """
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            assert len(options) == 1, f"a union the CRD cannot express: {node['anyOf']}"
            node = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        else:
            return node


def is_free_form(node: Schema) -> bool:
    """``dict[str, Any]`` in the model; preserve-unknown-fields in the CRD."""
    return node.get("additionalProperties") is True


def same_words(a: str | None, b: str | None) -> bool:
    return " ".join((a or "").split()) == " ".join((b or "").split())


# --- comparing ----------------------------------------------------------------------


def differences(model: Schema, crd: Schema, path: str, defs: Schema) -> list[str]:
    """Every disagreement between a model schema and a CRD schema at and below ``path``."""
    model = resolve(model, defs)
    found = keyword_differences(model, crd, path)
    if model.get("type") == "object":
        found += object_differences(model, crd, path, defs)
    if model.get("type") == "array":
        found += differences(model["items"], crd.get("items", {}), f"{path}[]", defs)
    return found


def keyword_differences(model: Schema, crd: Schema, path: str) -> list[str]:
    found = [
        f"{path}: {word} is {crd.get(word)!r} in the CRD but {model.get(word)!r} in the model"
        for word in SAME_KEYWORDS
        if model.get(word) != crd.get(word)
    ]
    if sorted(model.get("enum", [])) != sorted(crd.get("enum", [])):
        found.append(f"{path}: enum {crd.get('enum')} in the CRD, {model.get('enum')} in the model")
    return found


def object_differences(model: Schema, crd: Schema, path: str, defs: Schema) -> list[str]:
    if is_free_form(model):
        if crd.get("x-kubernetes-preserve-unknown-fields") is not True or "properties" in crd:
            return [f"{path}: free-form in the model; the CRD must preserve unknown fields"]
        return []
    if "additionalProperties" in model and model["additionalProperties"] is not False:
        if "additionalProperties" not in crd:
            return [f"{path}: a map in the model but not in the CRD"]
        return differences(model["additionalProperties"], crd["additionalProperties"],
                           f"{path}{{}}", defs)
    if "additionalProperties" in crd or crd.get("x-kubernetes-preserve-unknown-fields"):
        return [f"{path}: the CRD accepts fields the model forbids"]
    return property_differences(model, crd, path, defs)


def property_differences(model: Schema, crd: Schema, path: str, defs: Schema) -> list[str]:
    model_props, crd_props = model.get("properties", {}), crd.get("properties", {})
    found = [f"{path}.{name}: only in the model" for name in model_props.keys() - crd_props]
    found += [f"{path}.{name}: only in the CRD" for name in crd_props.keys() - model_props]
    if sorted(model.get("required", [])) != sorted(crd.get("required", [])):
        found.append(f"{path}: required {crd.get('required')} in the CRD, "
                     f"{model.get('required')} in the model")
    for name in model_props.keys() & crd_props.keys():
        field_path = f"{path}.{name}"
        field = resolve(model_props[name], defs)
        found += field_differences(field, crd_props[name], field_path,
                                   required=name in model.get("required", []))
        found += differences(model_props[name], crd_props[name], field_path, defs)
    return found


def field_differences(field: Schema, crd: Schema, path: str, *, required: bool) -> list[str]:
    """What ``kubectl explain`` shows and what the API server fills in must match the model."""
    found = []
    if not crd.get("description"):
        found.append(f"{path}: no description in the CRD")
    elif not same_words(field.get("description"), crd["description"]):
        found.append(f"{path}: description {crd['description']!r} in the CRD, "
                     f"{field.get('description')!r} in the model")
    model_default = field.get("default")
    if model_default is not None and crd.get("default") != model_default:
        found.append(f"{path}: default {crd.get('default')!r} in the CRD, "
                     f"{model_default!r} in the model")
    if model_default is None and "default" in crd and (required or "default" in field):
        # Required fields have no default; an explicit None means "absent" on the wire.
        # Only a default_factory field (no default in the JSON schema) may get one here.
        found.append(f"{path}: the CRD defaults a field the model leaves unset")
    return found


def top_level_differences(file_name: str) -> list[str]:
    schema = crd_schema(file_name)
    parts = MODELS[file_name]
    found = []
    expected = {"apiVersion", "kind", "metadata", *parts}
    if set(schema["properties"]) != expected:
        found.append(f"top level: {sorted(schema['properties'])}, expected {sorted(expected)}")
    for part, model in parts.items():
        json_schema = model_schema(model)
        crd_part = schema["properties"].get(part, {})
        found += differences(json_schema, crd_part, part, json_schema.get("$defs", {}))
    return found


def walk(node: Schema, path: str = "") -> list[tuple[str, Schema]]:
    """Every schema node of a CRD with its path."""
    nodes = [(path, node)]
    for name, child in node.get("properties", {}).items():
        nodes += walk(child, f"{path}.{name}")
    if "items" in node:
        nodes += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        nodes += walk(node["additionalProperties"], f"{path}{{}}")
    return nodes


# --- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("file_name", [PLAYBOOK_CRD, INCIDENT_CRD])
def test_crd_schema_matches_the_models(file_name: str) -> None:
    assert top_level_differences(file_name) == []


@pytest.mark.parametrize("file_name", [PLAYBOOK_CRD, INCIDENT_CRD])
def test_crd_is_structural_and_explained(file_name: str) -> None:
    problems = []
    for path, node in walk(crd_schema(file_name)):
        if "type" not in node:
            problems.append(f"{path or 'root'}: no type")
        for word in ("anyOf", "oneOf", "allOf", "$ref", "nullable"):
            if word in node:
                problems.append(f"{path}: uses {word}")
        # Fields need a description; list items, map values and metadata explain nothing.
        if not path.endswith(("[]", "{}", ".metadata")) and not node.get("description"):
            problems.append(f"{path or 'root'}: no description")
        for rule in node.get("x-kubernetes-validations", []):
            if not rule.get("message"):
                problems.append(f"{path}: the rule {rule['rule']!r} has no message")
    assert problems == []


@pytest.mark.parametrize(("file_name", "kind", "plural", "short_name"), [
    (PLAYBOOK_CRD, "ResponsePlaybook", api.PLAYBOOK_PLURAL, "rpb"),
    (INCIDENT_CRD, "SecurityIncident", api.INCIDENT_PLURAL, "si"),
])
def test_crd_names_scope_and_version(file_name: str, kind: str, plural: str,
                                     short_name: str) -> None:
    crd = load_crd(file_name)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{api.GROUP}"
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"]) == (kind, plural)
    assert names["shortNames"] == [short_name]
    assert names["categories"] == ["firebreak"]
    version = served_version(crd)
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(("file_name", "columns"), [
    (PLAYBOOK_CRD, {
        "Mode": ("string", ".spec.mode"),
        "Priority": ("integer", ".spec.priority"),
        "Steps": ("string", ".spec.steps[*].name"),
        "Ready": ("string", '.status.conditions[?(@.type=="Ready")].status'),
        "Age": ("date", ".metadata.creationTimestamp"),
    }),
    (INCIDENT_CRD, {
        "Phase": ("string", ".status.phase"),
        "Severity": ("string", ".spec.severity"),
        "Target": ("string", ".spec.target.name"),
        "Isolated": ("string", '.status.conditions[?(@.type=="Isolated")].status'),
        "Playbook": ("string", ".status.playbook.name"),
        "Signals": ("integer", ".status.signalCount"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }),
])
def test_printer_columns(file_name: str, columns: dict[str, tuple[str, str]]) -> None:
    printed = served_version(load_crd(file_name))["additionalPrinterColumns"]
    assert {c["name"]: (c["type"], c["jsonPath"]) for c in printed} == columns


# The comparison must itself notice drift, or the tests above prove nothing.


class WidenedSpec(api.SecurityIncidentSpec):
    ticket_url: str | None = Field(default=None, description="A link to the ticket.")


def incident_spec_differences(model: type[BaseModel], crd_spec: Schema) -> list[str]:
    json_schema = model_schema(model)
    return differences(json_schema, crd_spec, "spec", json_schema.get("$defs", {}))


def test_a_field_only_in_the_model_is_reported() -> None:
    crd_spec = crd_schema(INCIDENT_CRD)["properties"]["spec"]
    assert incident_spec_differences(WidenedSpec, crd_spec) == ["spec.ticketUrl: only in the model"]


def test_a_field_only_in_the_crd_is_reported() -> None:
    crd_spec = copy.deepcopy(crd_schema(INCIDENT_CRD)["properties"]["spec"])
    crd_spec["properties"]["target"]["properties"]["uid"] = {"type": "string", "description": "x"}
    assert incident_spec_differences(api.SecurityIncidentSpec, crd_spec) == [
        "spec.target.uid: only in the CRD"]


@pytest.mark.parametrize(("change", "reported"), [
    (lambda s: s["properties"]["severity"]["enum"].append("apocalyptic"), "spec.severity: enum"),
    (lambda s: s["required"].remove("title"), "spec: required"),
    (lambda s: s["properties"]["target"]["properties"]["name"].update(type="integer"),
     "spec.target.name: type"),
    (lambda s: s["properties"]["target"]["properties"]["name"].pop("minLength"),
     "spec.target.name: minLength"),
    (lambda s: s["properties"]["labels"].pop("additionalProperties"),
     "spec.labels: a map in the model"),
    (lambda s: s["properties"]["title"].update(description="Something else."),
     "spec.title: description"),
])
def test_a_changed_crd_keyword_is_reported(change: Any, reported: str) -> None:
    crd_spec = copy.deepcopy(crd_schema(INCIDENT_CRD)["properties"]["spec"])
    change(crd_spec)
    found = incident_spec_differences(api.SecurityIncidentSpec, crd_spec)
    assert len(found) == 1 and found[0].startswith(reported), found


def test_a_changed_default_is_reported() -> None:
    json_schema = model_schema(api.ResponsePlaybookSpec)
    crd_spec = copy.deepcopy(crd_schema(PLAYBOOK_CRD)["properties"]["spec"])
    crd_spec["properties"]["approval"]["properties"]["timeoutSeconds"]["default"] = 60
    found = differences(json_schema, crd_spec, "spec", json_schema["$defs"])
    assert found == ["spec.approval.timeoutSeconds: default 60 in the CRD, 3600 in the model"]


# --- step params: the CRD's rules, api.PARAMS_OF and each action's own model agree ------


def _step_rules() -> dict[str, set[str]]:
    """params field -> the actions the CRD's rule lets it appear with."""
    step = crd_schema(PLAYBOOK_CRD)["properties"]["spec"]["properties"]["steps"]["items"]
    owners: dict[str, set[str]] = {}
    for rule in step["x-kubernetes-validations"]:
        match = re.fullmatch(r"!has\(self\.params\) \|\| !has\(self\.params\.(\w+)\) \|\| "
                             r"self\.action (?:== '(\w+)'|in \[([^\]]+)\])", rule["rule"])
        if match:
            field, one, many = match.groups()
            owners[field] = {one} if one else {a.strip(" '") for a in many.split(",")}
    return owners


def _field_schemas(model: type[BaseModel]) -> dict[str, Schema]:
    schema = model_schema(model)
    return {name: resolve(node, schema.get("$defs", {}))
            for name, node in schema["properties"].items()}


def test_every_param_names_the_actions_it_applies_to_in_the_crd() -> None:
    expected: dict[str, set[str]] = {}
    for action, fields in api.PARAMS_OF.items():
        for field in fields:
            expected.setdefault(field, set()).add(action.value)
    assert _step_rules() == expected
    assert set(expected) == set(_field_schemas(api.StepParams))


@pytest.mark.parametrize("action", list(api.ActionName))
def test_each_actions_params_model_takes_what_the_api_says(action: api.ActionName) -> None:
    own = _field_schemas(registry()[action].params_model)
    assert set(own) == api.PARAMS_OF[action]
    shared = _field_schemas(api.StepParams)
    for name, node in own.items():
        for word in ("type", "enum", "minimum", "maximum", "minLength"):
            assert node.get(word) == shared[name].get(word), (action, name, word)

