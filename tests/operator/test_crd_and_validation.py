"""The CRD and the typed model are one source of truth; semantic checks say what to fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from lamina_operator.crd import render_crd, render_crd_yaml
from lamina_operator.spec import LLMDeploymentSpec
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
