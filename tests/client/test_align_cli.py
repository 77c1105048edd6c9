"""``lamina align fit|apply`` and ``lamina.fit_alignment`` against two fake servers.

The target fake is the source fake with its vectors rotated, so a fitted map must
reproduce the target's vectors from the source's on prompts it never saw.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import lamina
import numpy as np
import pytest
from client.client_fake_server import F32, FakeServer
from lamina.align_sources import Deployment, parse_source
from lamina.cli import main
from safetensors.numpy import load_file

SOURCE, TARGET = "http://source.test", "http://target.test"


def _rotation() -> F32:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
    return q.astype(np.float32)


@dataclass
class RotatedFake(FakeServer):
    """The fake model seen through a fixed rotation of its hidden space."""

    rotation: F32 = field(default_factory=_rotation)

    def states(self, prompt: str | list[int], layer: int) -> F32:
        result: F32 = super().states(prompt, layer) @ self.rotation
        return result


@pytest.fixture
def source() -> FakeServer:
    return FakeServer(model="org/source", max_prompts=16)


@pytest.fixture
def target() -> RotatedFake:
    return RotatedFake(model="org/target")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LAMINA_URL", "LAMINA_API_KEY", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)


def anchors(n: int, start: int = 0) -> list[str]:
    return [f"anchor {i} says {i * 7 % 13} and {i % 5}" for i in range(start, start + n)]


def run(source: FakeServer, target: FakeServer, *argv: str) -> int:
    servers = {"source.test": source, "target.test": target}
    transport = httpx.MockTransport(lambda request: servers[request.url.host](request))
    return main(list(argv), transport=transport)


def prompts_file(tmp_path: Path, prompts: list[str]) -> str:
    path = tmp_path / "anchors.txt"
    path.write_text("\n".join(prompts) + "\n")
    return str(path)


def test_fit_between_two_servers_prints_the_report_and_writes_the_map(
    source: FakeServer,
    target: RotatedFake,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "map.safetensors"
    prompts = anchors(60)
    code = run(
        source, target, "align", "fit", "--source", SOURCE, "--target", TARGET,
        "-f", prompts_file(tmp_path, prompts), "-o", str(out),
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == "anchors: 60 prompts, 48 to fit, 12 held out (seed 0); pooling last"
    assert lines[1] == f"source: org/source layers [-2] (8 values) from {SOURCE}"
    assert lines[2] == f"target: org/target layers [-2] (8 values) from {TARGET}"
    assert lines[3].startswith("method: ridge, centred, scale global; λ = ")
    table = {line.split()[0]: line for line in lines[5:]}
    assert set(table) >= {"ridge", "identity", "zero", "shuffled", "chance"}
    assert lines[-1] == f"map -> {out}"

    # The server's limit (16 prompts per request) set the batches: no whole matrix at once.
    assert source.batches() == [16, 16, 16, 12]
    assert target.batches() == [60]

    wmap = lamina.AlignmentMap.load(out)
    facts = wmap.facts
    assert (facts.source.model, facts.target.model) == ("org/source", "org/target")
    assert (facts.source.layers, facts.pooling, facts.method) == ((-2,), "last", "ridge")
    assert facts.num_anchors == 60
    text = json.dumps(prompts, ensure_ascii=False, separators=(",", ":"))
    assert facts.prompt_set_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert [row["name"] for row in facts.metrics["rows"]] == [
        "ridge",
        "identity",
        "zero map",
        "shuffled pairs",
    ]

    # New prompts: the map turns the source's vectors into the target's.
    new = anchors(5, start=100)
    x = np.stack([source.expected(p, -2, "last") for p in new])
    y = np.stack([target.expected(p, -2, "last") for p in new])
    np.testing.assert_allclose(wmap.apply(x), y, atol=1e-4)


def test_layer_ensembles_and_different_layers_per_side(
    source: FakeServer, target: RotatedFake, tmp_path: Path
) -> None:
    out = tmp_path / "map.safetensors"
    code = run(
        source, target, "align", "fit", "--source", SOURCE, "--target", TARGET,
        "--layers", "-4,-3,-2", "--target-layers", "-1", "--pooling", "mean",
        "-o", str(out), *anchors(40),
    )  # fmt: skip
    assert code == 0
    sent = [json.loads(r.content) for r in source.hidden_state_requests()]
    assert {tuple(body["layers"]) for body in sent} == {(-4, -3, -2)}
    assert {body["pooling"] for body in sent} == {"mean"}
    assert json.loads(target.hidden_state_requests()[0].content)["layers"] == [-1]
    wmap = lamina.AlignmentMap.load(out)
    assert (wmap.input_size, wmap.output_size) == (24, 8)
    # The vectors of three layers, side by side in the order asked.
    new = anchors(3, start=200)
    x = np.stack([[source.expected(p, la, "mean") for la in (-4, -3, -2)] for p in new])
    y = np.stack([target.expected(p, -1, "mean") for p in new])
    np.testing.assert_allclose(wmap.apply(x), y, atol=1e-3)


def test_saved_vectors_need_no_server_and_apply_maps_them(
    source: FakeServer, target: RotatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = prompts_file(tmp_path, anchors(50))
    x_file, y_file = tmp_path / "x.safetensors", tmp_path / "y.npy"
    assert (
        run(source, target, "hidden-states", "--url", SOURCE, "-f", prompts, "-o", str(x_file)) == 0
    )
    assert (
        run(source, target, "hidden-states", "--url", TARGET, "-f", prompts, "-o", str(y_file)) == 0
    )
    requests = len(source.requests) + len(target.requests)
    out = tmp_path / "map.safetensors"
    code = run(
        source, target, "align", "fit", "--source", str(x_file), "--target", str(y_file),
        "-f", prompts, "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0
    assert len(source.requests) + len(target.requests) == requests  # files only
    report = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert report["source"]["model"] == "org/source"  # from the safetensors metadata
    assert report["target"]["model"] == ""  # .npy files do not say
    ridge = report["metrics"]["rows"][0]
    assert ridge["name"] == "ridge"
    assert ridge["cosine"] > 0.9999
    assert report["output"] == str(out)

    mapped = tmp_path / "mapped.npy"
    code = run(source, target, "align", "apply", str(out), str(x_file), "-o", str(mapped))
    assert code == 0
    assert capsys.readouterr().out == f"50 prompts, [50, 8] -> [50, 8] -> {mapped}\n"
    np.testing.assert_allclose(np.load(mapped), np.load(y_file), atol=1e-4)


def test_pooling_all_pairs_tokens_and_keeps_prompts_whole(
    source: FakeServer, target: RotatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "map.safetensors"
    code = run(
        source, target, "align", "fit", "--source", SOURCE, "--target", TARGET,
        "--pooling", "all", "--method", "procrustes", "-o", str(out), *anchors(30),
    )  # fmt: skip
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    # 6 words (tokens) per prompt; 6 prompts held out whole.
    assert first == (
        "anchors: 30 prompts, 24 to fit, 6 held out (seed 0); pooling all; 144 + 36 token rows"
    )
    # Saved per-token vectors map to per-token target vectors, prompt by prompt.
    new = ["one two", "three four five"]
    states, mapped = tmp_path / "new.safetensors", tmp_path / "mapped.safetensors"
    argv = ["--pooling", "all", *new, "-o", str(states)]
    assert run(source, target, "hidden-states", "--url", SOURCE, *argv) == 0
    assert run(source, target, "align", "apply", str(out), str(states), "-o", str(mapped)) == 0
    got = load_file(mapped)
    assert sorted(got) == ["prompt.0.mapped", "prompt.1.mapped"]
    np.testing.assert_allclose(got["prompt.1.mapped"], target.states(new[1], -2), atol=1e-4)


def test_the_python_api_takes_clients_and_arrays(source: FakeServer, target: RotatedFake) -> None:
    prompts = anchors(40)
    with lamina.Client(SOURCE, transport=httpx.MockTransport(source)) as client:
        y = np.stack([target.expected(p, -2, "last") for p in prompts])
        result = lamina.fit_alignment(client, y, prompts, method="procrustes", holdout=0.25)
    assert result.alignment.test_anchors == 10
    assert result.map.facts.source.model == "org/source"
    assert result.to_dict()["metrics"]["rows"][0]["cosine"] > 0.9999
    assert "procrustes" in result.table()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "x.npy", "--target", "y.npy", "-o", "m.safetensors", "-f", "few.txt"],
         "x.npy holds 30 anchors but 29 prompts were given"),
        (["--source", "x.npy", "--target", "short.npy", "-o", "m.safetensors"],
         "the source has 30 anchors and the target 10"),
        (["--source", "short.npy", "--target", "short.npy", "-o", "m.safetensors"],
         "too few anchors: 10 prompts cannot give a held-out share of 0.2 of at least 5 "
         "prompts and 10 or more to fit with 5-fold cross-validation; give at least 23"),
        (["--source", "x.npy", "--target", "y.npy", "--holdout", "0.5", "--folds", "20",
          "-o", "m.safetensors"], "change --holdout / --folds"),
        (["--source", "x.npy", "--target", "y.npy", "--layers", "-3,-2", "-o", "m.safetensors"],
         "pass the --layers it was written with"),
        (["--source", "x.npy", "--target", "y.npy", "-o", "m.npy"],
         "--output must end in .safetensors"),
        (["--source", "Not_A/Thing!", "--target", "y.npy", "-o", "m.safetensors"],
         "neither a URL"),
        (["--source", SOURCE, "--target", "y.npy", "-o", "m.safetensors"], "no prompts"),
        (["--source", "x.npy", "--target", "y.npy", "--lambdas", "0,1", "-o", "m.safetensors"],
         "positive numbers"),
    ],
)  # fmt: skip
def test_fit_errors_say_what_to_change_and_exit_2(
    source: FakeServer,
    target: RotatedFake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("x.npy", rng.standard_normal((30, 8)).astype(np.float32))
    np.save("y.npy", rng.standard_normal((30, 8)).astype(np.float32))
    np.save("short.npy", rng.standard_normal((10, 8)).astype(np.float32))
    Path("few.txt").write_text("\n".join(anchors(29)))
    assert run(source, target, "align", "fit", *argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not Path("m.safetensors").exists()


def test_apply_refuses_vectors_of_another_size(
    source: FakeServer, target: RotatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "map.safetensors"
    assert (
        run(
            source, target, "align", "fit", "-s", SOURCE, "-t", TARGET, "-o", str(out), *anchors(30)
        )
        == 0
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 5), np.float32))
    assert (
        run(source, target, "align", "apply", str(out), str(wrong), "-o", str(tmp_path / "o.npy"))
        == 2
    )
    assert "holds vectors of 5 values, but the map takes 8" in capsys.readouterr().err
    assert run(source, target, "align", "apply", str(wrong), str(wrong), "-o", "o.npy") == 2
    assert "cannot read the map" in capsys.readouterr().err


def test_sources_on_the_command_line() -> None:
    assert parse_source("http://h:8000") == "http://h:8000"
    assert parse_source("runs/a.npy") == Path("runs/a.npy")
    assert parse_source("llama", "research") == Deployment("llama", "research")
    assert parse_source("ml/qwen-2-5-7b", "research", "prod") == Deployment(
        "qwen-2-5-7b", "ml", "prod"
    )


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "fit", "--help"]) == 0
    assert "lamina align fit --source research/llama-3-1-8b" in capsys.readouterr().out
    assert main(["align", "apply", "--help"]) == 0
    assert main(["align"]) == 2
