"""``lamina align`` end to end on real vLLM servers.

* A tiny Llama and a copy whose residual stream is rotated by a random orthogonal ``R``
  (``rotated_model.py``): the copy's hidden states are the original's times ``R``
  (checked), ``lamina align fit --method procrustes`` through the real CLI recovers
  ``R``, and a server started with that map (``--map``) answers, from the original
  model, the rotated model's vectors.
* Two unrelated random models: the report shows the map is no better than its
  baselines. Prompts are one token each, a different token per anchor: two random
  models share their input, so with repeated tokens a map could learn the token
  identity both models see (a real relation, not an unrelated pair).

At most one server of this module runs beside the session's: the rotated server
stops before the mapped one starts (its answers are kept for the comparison).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lamina
import numpy as np
import pytest
from lamina.cli import main
from safetensors.numpy import save_file
from server.rotated_model import F64, random_rotation, rotated_copy
from server.server_helpers import SERVER_FLAGS, Reference, Server, array, per_prompt, server_env
from tiny_model import TinyModelSpec, ensure_tiny_model

pytestmark = pytest.mark.vllm

HIDDEN = 256
WORDS = [
    "the", "residual", "stream", "of", "a", "transformer", "carries", "information",
    "between", "layers", "hidden", "states", "can", "be", "probed", "steered", "and",
    "aligned", "kubernetes", "runs", "containers", "in", "pods", "quick", "brown", "fox",
    "jumps", "over", "lazy", "dog", "numbers", "tokens", "vectors",
]  # fmt: skip


def word_prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def lamina_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report: dict[str, Any] = json.loads(captured.out)
    return report


def rows(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {row["name"]: row for row in report["metrics"]["rows"]}


@pytest.fixture(scope="module")
def rotation() -> F64:
    return random_rotation(HIDDEN, seed=7)


@dataclass
class RotationFit:
    original: list[np.ndarray]  # per probe prompt [layers, tokens, hidden], original model
    rotated: list[np.ndarray]  # the same from the rotated copy
    probes: list[str]
    probe_targets: np.ndarray  # the rotated model's layer -2, last token, of the probes
    map_path: Path  # its metadata holds the report


@pytest.fixture(scope="module")
def rotation_fit(
    llama_server: Server,
    tiny_models: dict[str, Path],
    rotation: F64,
    tmp_path_factory: pytest.TempPathFactory,
) -> RotationFit:
    """Everything that needs the rotated server, which stops at the end."""
    work = tmp_path_factory.mktemp("rotation")
    copy = rotated_copy(tiny_models["llama"], rotation, work / "llama-rotated")
    server = Server("llama-rotated", copy, list(SERVER_FLAGS)).start()
    try:
        server.wait_ready()
        probes = word_prompts(12, seed=99)
        with lamina.Client(llama_server.url) as a, lamina.Client(server.url) as b:
            layers = [0, 1, 2, 3]
            original = per_prompt(a.hidden_states(probes[:4], layers, "all"))
            rotated = per_prompt(b.hidden_states(probes[:4], layers, "all"))
            probe_targets = b.hidden_states(probes, -2)
        anchors = work / "anchors.txt"
        anchors.write_text("\n".join(word_prompts(600, seed=1)) + "\n")
        map_path = work / "rotation.safetensors"
        code = main(
            [
                "align", "fit", "--source", llama_server.url, "--target", server.url,
                "--method", "procrustes", "-f", str(anchors), "-o", str(map_path),
                "--source-revision", "seed-0", "--target-revision", "seed-0-rotated",
            ]
        )  # fmt: skip
    finally:
        server.stop()
    assert code == 0
    return RotationFit(original, rotated, probes, np.asarray(probe_targets), map_path)


@pytest.fixture(scope="module")
def mapped_server(tiny_models: dict[str, Path], rotation_fit: RotationFit) -> Iterator[Server]:
    """The original model, serving the fitted map as ``rotate``."""
    args = ["--map", f"rotate={rotation_fit.map_path}", *SERVER_FLAGS]
    server = Server("llama-mapped", tiny_models["llama"], args).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_the_rotated_copys_hidden_states_are_the_originals_times_r(
    rotation_fit: RotationFit, rotation: F64
) -> None:
    for original, rotated in zip(rotation_fit.original, rotation_fit.rotated, strict=True):
        assert original.shape == rotated.shape  # [4 layers, tokens, 256]
        want = original.astype(np.float64) @ rotation
        scale = float(np.abs(want).max())
        assert float(np.abs(rotated - want).max()) <= 1e-5 * scale
        assert float(np.abs(rotated - original).max()) > 0.1 * scale  # really rotated


def test_align_recovers_the_rotation(rotation_fit: RotationFit, rotation: F64) -> None:
    wmap = lamina.AlignmentMap.load(rotation_fit.map_path)
    report = wmap.facts.metrics
    by_name = {row["name"]: row for row in report["rows"]}
    fitted = by_name["procrustes"]
    assert report["held_out_anchors"] == 120
    assert fitted["cosine"] >= 0.999
    assert fitted["r2"] >= 0.999
    assert fitted["top1"] == 1.0
    assert fitted["orthogonality"] == pytest.approx(1.0)
    error = float(np.linalg.norm(wmap.weight - rotation) / np.linalg.norm(rotation))
    assert error <= 1e-4
    # The baselines are far off: the map learned the rotation, not the data's shape.
    assert by_name["identity"]["cosine"] < 0.5
    assert by_name["shuffled pairs"]["r2"] < 0
    assert by_name["shuffled pairs"]["top1"] <= 5 / 120
    assert (wmap.facts.source.revision, wmap.facts.target.revision) == (
        "seed-0",
        "seed-0-rotated",
    )
    assert wmap.facts.num_anchors == 600


def test_a_server_with_the_map_answers_in_the_rotated_models_space(
    mapped_server: Server, rotation_fit: RotationFit
) -> None:
    health = httpx.get(f"{mapped_server.url}/health", timeout=10).json()
    assert [m["name"] for m in health["maps"]] == ["rotate"]
    assert health["maps"][0]["layers"] == [-2]
    with lamina.Client(mapped_server.url) as client:
        mapped = array(client.mapped_hidden_states(rotation_fit.probes, "rotate"))
        binary = array(client.mapped_hidden_states(rotation_fit.probes, "rotate", binary=True))
    want = rotation_fit.probe_targets
    assert mapped.shape == want.shape == (12, HIDDEN)
    scale = float(np.abs(want).max())
    assert float(np.abs(mapped - want).max()) <= 1e-3 * scale
    np.testing.assert_array_equal(binary, mapped)
    # And the same as mapping the original's vectors on the client.
    wmap = lamina.AlignmentMap.load(rotation_fit.map_path)
    with lamina.Client(mapped_server.url) as client:
        local = wmap.apply(client.hidden_states(rotation_fit.probes, -2))
    np.testing.assert_allclose(mapped, local, atol=1e-5 * scale)


def test_requests_that_do_not_fit_the_map_are_refused_by_the_real_server(
    mapped_server: Server,
) -> None:
    url = f"{mapped_server.url}/v1/hidden_states"
    r = httpx.post(url, json={"prompts": ["Hi"], "map": "rotate", "layers": [-1]}, timeout=30)
    assert r.status_code == 422
    assert "fitted on layers [-2] with pooling 'last'" in r.json()["error"]["message"]
    r = httpx.post(url, json={"prompts": ["Hi"], "map": "other"}, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "no map 'other' on this server; loaded maps: rotate"


def test_unrelated_models_map_no_better_than_the_baselines(
    llama_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One distinct token per anchor (after BOS): nothing to learn across anchors.
    prompts = [[1, token] for token in range(3, 512)]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    # The other model's vectors, computed by transformers (the server's reference),
    # saved as `lamina hidden-states` writes them: a file source.
    other = Reference(ensure_tiny_model(TinyModelSpec(arch="llama", seed=1)))
    vectors = np.stack([other.expected(p, -2, "last") for p in prompts]).astype(np.float32)
    target = tmp_path / "other.safetensors"
    save_file({"layer.-2": vectors}, str(target), metadata={"model": "tiny-llama-seed-1"})

    report = lamina_cli(
        "align", "fit", "--source", llama_server.url, "--target", str(target),
        "-f", str(anchors), "-o", str(tmp_path / "m.safetensors"),
        capsys=capsys,
    )  # fmt: skip
    by_name = rows(report)
    fitted, zero = by_name["ridge"], by_name["zero map"]
    held_out = report["metrics"]["held_out_anchors"]
    assert held_out == 102
    # Chance is 1/102 (top-1) and 5/102 (top-5); the bounds are ~4 binomial
    # standard deviations above it.
    assert fitted["top1"] <= 5 / held_out
    assert fitted["top5"] <= 15 / held_out
    assert fitted["r2"] < 0.05  # explains nothing of the target's variation...
    assert fitted["r2"] <= zero["r2"] + 0.02  # ...beyond what its mean does
    assert fitted["cosine"] <= zero["cosine"] + 0.02
    assert any("barely predicts" in note for note in report["notes"])


def test_a_map_that_cannot_be_read_stops_the_server_before_the_model_loads(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.safetensors"
    model = str(tiny_models["llama"])
    proc = subprocess.run(
        [sys.executable, "-m", "lamina_server", "--model", model, "--map", f"to-qwen={missing}"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert f"lamina_server: cannot read map 'to-qwen' ({missing})" in proc.stderr
    assert "Loading" not in proc.stderr  # no engine was started
