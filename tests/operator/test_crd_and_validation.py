"""The CRD and the typed model are one source of truth; semantic checks say what to fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from lamina_operator import spec as spec_module
from lamina_operator.crd import render_crd, render_crd_yaml
from lamina_operator.spec import ApiModel, LLMDeploymentSpec, Rule
from lamina_operator.validation import InvalidSpec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def test_committed_crd_is_generated_from_the_typed_model() -> None:
    committed = (REPO / "crds" / "lamina.dev_llmdeployments.yaml").read_text()
    assert committed == render_crd_yaml(), (
        "crds/ is stale: run `python -m lamina_operator.crd > crds/lamina.dev_llmdeployments.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that have properties but no description."""
    missing: list[str] = []
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            here = f"{path}.{name}"
            if "description" not in prop and name not in ("metadata",):
                missing.append(here)
            missing += _walk(prop, here)
        if isinstance(node.get("items"), dict):
            missing += _walk(node["items"], path + "[]")
    return missing


def test_every_spec_and_status_field_is_described_for_kubectl_explain() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_every_typed_field_is_in_the_crd() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_props = schema["properties"]["spec"]["properties"]
    aliases = {f.alias for f in LLMDeploymentSpec.model_fields.values()}
    assert aliases == set(spec_props)


def _rules_of_models() -> set[tuple[str, str]]:
    models = [m for m in vars(spec_module).values() if isinstance(m, type)]
    rules: list[Rule] = []
    for model in models:
        if issubclass(model, ApiModel):
            rules += [*model.rules, *getattr(model, "name_rules", ())]
    return {(r.cel, r.message) for r in rules}


def _rules_in_crd(node: Any) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        found |= {(r["rule"], r["message"]) for r in node.get("x-kubernetes-validations", [])}
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found |= _rules_in_crd(child)
    return found


# A spec each rule refuses (the same specs are refused at admission by the API server:
# tests/operator/test_bad_manifests.py).
RULE_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "tensorParallelSize × pipelineParallelSize must be at most 64 GPUs": (
        "x",
        {"model": {"name": "m"}, "engine": {"tensorParallelSize": 8, "pipelineParallelSize": 16}},
    ),
    "every entry of defaultLayers must also be in allowedLayers": (
        "x",
        {"model": {"name": "m"}, "hiddenStates": {"defaultLayers": [-2], "allowedLayers": [0]}},
    ),
    "autoscaling.minReplicas must not exceed autoscaling.maxReplicas": (
        "x",
        {"model": {"name": "m"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
    ),
    spec_module.MIN_ZERO_NEEDS_KEDA: (
        "x",
        {"model": {"name": "m"}, "autoscaling": {"autoscaler": "HPA", "minReplicas": 0}},
    ),
    "modelCache: set persistentVolumeClaim or emptyDirSizeLimit, not both": (
        "x",
        {
            "model": {"name": "m"},
            "modelCache": {"persistentVolumeClaim": "c", "emptyDirSizeLimit": "1Gi"},
        },
    ),
    "disruptionBudget: set minAvailable or maxUnavailable, not both": (
        "x",
        {"model": {"name": "m"}, "disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
    ),
    "cost.suspendOverBudget needs cost.monthlyBudget": (
        "x",
        {"model": {"name": "m"}, "cost": {"pricePerHour": 2, "suspendOverBudget": True}},
    ),
    "tensor or pipeline parallelism needs GPUs: set resources.useGPU to true": (
        "x",
        {
            "model": {"name": "m"},
            "resources": {"useGPU": False},
            "engine": {"tensorParallelSize": 2},
        },
    ),
    spec_module.NAME_RULE.message: ("x" * 53, {"model": {"name": "m"}}),
}


def test_every_rule_is_in_the_crd_once_with_its_message() -> None:
    rules = _rules_of_models()
    assert len(rules) == len(RULE_EXAMPLES)
    assert _rules_in_crd(render_crd()) == rules


@pytest.mark.parametrize("message", sorted(RULE_EXAMPLES))
def test_every_rule_refuses_its_example_in_python(message: str) -> None:
    name, spec = RULE_EXAMPLES[message]
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(name, spec)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        (
            "x",
            {"model": {"name": "meta-llama/Llama-3.1-8B"}, "hiddenStates": {"defaultLayers": [40]}},
            "spec.hiddenStates.defaultLayers has layer 40, but meta-llama/Llama-3.1-8B has 32 "
            "layers: use an index from -32 to 31",
        ),
        (
            "x",
            {"model": {"name": "m", "numLayers": 4}, "hiddenStates": {"allowedLayers": [-5, -2]}},
            "layer -5",
        ),
        (
            "x",
            {"model": {"name": "m", "numLayers": 4}, "engine": {"pipelineParallelSize": 8}},
            "more stages than the model's 4 layers",
        ),
        ("x" * 53, {"model": {"name": "m"}}, "at most 52 characters"),
        ("x", {"model": {"name": "m"}, "replicas": -1}, "spec.replicas"),
        ("x", {"model": {"name": "m"}, "surprise": 1}, "spec.surprise: Extra inputs"),
        (
            "x",
            {"model": {"name": "m"}, "hiddenStates": {"limits": {"maxJsonDepth": 1000}}},
            "spec.hiddenStates.limits.maxJsonDepth: Input should be less than or equal to 256",
        ),
        (
            "x",
            {"model": {"name": "m"}, "hiddenStates": {"limits": {"maxHeaderBytes": 100}}},
            "spec.hiddenStates.limits.maxHeaderBytes: Input should be greater than or equal",
        ),
        (
            "x",
            {"model": {"name": "m"}, "cost": {"pricePerHour": 2, "suspendOverBudget": True}},
            "cost.suspendOverBudget needs cost.monthlyBudget",
        ),
        ("x", {"model": {"name": "m"}, "cost": {"pricePerHour": -1}}, "spec.cost.pricePerHour"),
    ],
)
def test_invalid_specs_say_what_to_change(name: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(name, spec)
    assert message in str(caught.value)


def test_known_model_facts_come_from_the_catalogue() -> None:
    _, facts = parse_spec("x", {"model": {"name": "meta-llama/Llama-3.1-70B-Instruct"}})
    assert facts is not None
    assert (facts.num_layers, facts.hidden_size, facts.source) == (80, 8192, "catalogue")


def test_unknown_models_have_no_facts_and_any_layer_passes() -> None:
    _, facts = parse_spec(
        "x", {"model": {"name": "/models/mine"}, "hiddenStates": {"defaultLayers": [99]}}
    )
    assert facts is None


def test_readme_reference_is_generated_from_the_schema() -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "hack" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    readme = (REPO / "README.md").read_text()
    assert readme == generate.readme_with_reference(readme), "README is stale: run `make generate`"
