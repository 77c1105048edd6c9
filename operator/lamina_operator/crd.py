"""Render the LLMDeployment CustomResourceDefinition from the typed model in `spec`.

`python -m lamina_operator.crd` prints it (`--markdown`: the reference table in
README.md); `crds/`, the chart and README hold the output and tests fail when they
drift from the model.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import yaml

from lamina_operator import spec

JsonSchema = dict[str, Any]

# JSON-Schema keywords pydantic emits that a Kubernetes structural schema does not take
# (and `additionalProperties: true/false`; a schema-valued one, a map, stays).
_DROPPED_KEYS = {"title", "$defs"}


def _inline(node: Any, defs: dict[str, JsonSchema]) -> Any:
    """Resolve `$ref`s and rewrite pydantic's JSON Schema into OpenAPI v3 as CRDs want it."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **siblings}, defs)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "") is None:
            del rest["default"]
        if len(variants) == 1:
            return _inline({**variants[0], **rest}, defs)
        node = {**rest, "anyOf": variants}

    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "additionalProperties" and isinstance(value, bool)):
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = _inline(value, defs)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "anyOf" in out:  # int-or-string: variants carry only their type
        out["anyOf"] = [{"type": v["type"]} for v in out["anyOf"]]
    return out


def _defaults_of(node: JsonSchema) -> dict[str, Any]:
    """The object admission would build from `{}`: every property that has a default."""
    props = node["properties"].items()
    return {name: copy.deepcopy(prop["default"]) for name, prop in props if "default" in prop}


def _default_nested_objects(node: JsonSchema) -> None:
    """Give optional nested objects a default built from their fields' defaults, so a
    user who leaves out `engine:` gets the same object as one who writes `engine: {}`.
    (CRD defaults are validated against CEL rules as written, so `{}` would not do.)"""
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            _default_nested_objects(prop)
            if name not in required and "default" not in prop and not prop.get("required"):
                prop["default"] = _defaults_of(prop)
        elif prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            _default_nested_objects(prop["items"])


def openapi_schema() -> JsonSchema:
    """The structural OpenAPI v3 schema of an LLMDeployment object."""
    raw = spec.LLMDeployment.model_json_schema(by_alias=True, mode="validation")
    schema: JsonSchema = _inline(raw, raw.get("$defs", {}))
    _default_nested_objects(schema["properties"]["spec"])
    status = schema["properties"]["status"]
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema["properties"] = {
        "apiVersion": {"type": "string", "description": "API version: lamina.dev/v1alpha1."},
        "kind": {"type": "string", "description": "LLMDeployment."},
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    return schema


PRINTER_COLUMNS: list[JsonSchema] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {
        "name": "Status",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # With spec.cost, this month so far (`kubectl get llmd -o wide`; `lamina cost` has more).
    {
        "name": "Accel-Hours",
        "type": "number",
        "jsonPath": ".status.cost.acceleratorHours",
        "priority": 1,
    },
    {"name": "Cost", "type": "number", "jsonPath": ".status.cost.cost", "priority": 1},
    {
        "name": "Projected",
        "type": "number",
        "jsonPath": ".status.cost.projectedCost",
        "priority": 1,
    },
    {"name": "Currency", "type": "string", "jsonPath": ".status.cost.currency", "priority": 1},
]


def render_crd() -> JsonSchema:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{spec.PLURAL}.{spec.API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lamina"},
        },
        "spec": {
            "group": spec.API_GROUP,
            "names": {
                "kind": spec.KIND,
                "listKind": f"{spec.KIND}List",
                "plural": spec.PLURAL,
                "singular": spec.SINGULAR,
                "shortNames": spec.SHORT_NAMES,
                "categories": spec.CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": spec.API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML file committed under crds/."""
    header = "# Generated by `python -m lamina_operator.crd` from lamina_operator/spec.py.\n"
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=100, allow_unicode=True)


def _type_of(prop: JsonSchema) -> str:
    if prop.get("x-kubernetes-int-or-string"):
        return "int or string"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if prop.get("type") == "array":
        return f"[]{_type_of(prop.get('items', {}))}"
    if prop.get("type") == "object" and "additionalProperties" in prop:
        return f"map[string]{_type_of(prop['additionalProperties'])}"
    return str(prop.get("type", "object"))


def _reference_rows(node: JsonSchema, path: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        here = f"{path}.{name}"
        default = prop.get("default")
        literal = default if isinstance(default, str) else json.dumps(default)
        shown = "" if default is None or isinstance(default, dict) else f"`{literal}`"
        description = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
        must = " **required**" if name in required else ""
        rows.append(f"| `{here}` | {_type_of(prop)}{must} | {shown} | {description} |")
        if prop.get("type") == "object" and "properties" in prop:
            rows += _reference_rows(prop, here)
    return rows


def render_reference_markdown() -> str:
    """The `spec` reference table for README.md, generated from the same schema."""
    spec_schema = openapi_schema()["properties"]["spec"]
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    lines += _reference_rows(spec_schema, "spec")
    rules = [
        rule["message"]
        for node in _walk_objects(spec_schema)
        for rule in node.get("x-kubernetes-validations", [])
    ]
    lines += ["", "Checked at admission (CEL): " + "; ".join(rules) + "."]
    return "\n".join(lines) + "\n"


def _walk_objects(node: JsonSchema) -> list[JsonSchema]:
    found = [node]
    for prop in node.get("properties", {}).values():
        found += _walk_objects(prop)
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(render_reference_markdown())
    else:
        sys.stdout.write(render_crd_yaml())
