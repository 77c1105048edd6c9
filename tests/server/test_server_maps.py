"""Alignment maps on the server (``--map NAME=PATH``, ``"map"`` in ``/v1/hidden_states``)
over the fake engine: the file the client writes is read by the server's own loader,
mapped answers are the map applied to the engine's vectors, conflicts are 4xx."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from lamina.align_map import AlignmentMap, MapFacts, Side
from lamina.wire import Pooling
from lamina_server.config import parse_command_line
from lamina_server.maps import LoadedMap, MapError, check_against_model, read_map, read_maps
from lamina_server.protocol import MappedHiddenStatesResponse
from server.fake_engine import FakeEngine, make_client


def client_map(path: Path, layers: tuple[int, ...] = (-2, 0), pooling: Pooling = "mean") -> Path:
    """A map as ``lamina align fit`` writes it: the fake engine's layers -> 3 values."""
    rng = np.random.default_rng(0)
    dx, dy = 8 * len(layers), 3

    def f32(*shape: int) -> Any:
        return rng.standard_normal(shape).astype(np.float32)

    facts = MapFacts(
        source=Side("fake", "", layers, 8),
        target=Side("other/model", "r1", (-1,), dy),
        pooling=pooling,
        method="ridge",
        center=True,
        scale="global",
    )
    AlignmentMap(f32(dx, dy), f32(dy), f32(dx), f32(dx), f32(dy), f32(dy), facts).save(path)
    return path


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedMap:
    return read_map("to-other", str(client_map(tmp_path / "m.safetensors")))


def expected(engine: FakeEngine, m: LoadedMap, text: str) -> np.ndarray:
    ids = engine.tokenize(text)
    x = np.concatenate([engine.rows(ids, la % 4).mean(0) for la in m.layers])
    result: np.ndarray = x @ m.weight + m.bias
    return result


def post(maps: dict[str, LoadedMap], body: dict[str, Any], **headers: str) -> Any:
    async def run() -> Any:
        client, _, engine = make_client(maps=maps)
        r = await client.post("/v1/hidden_states", json=body, headers=headers)
        return r, engine

    return asyncio.run(run())


# -- the file and the settings ---------------------------------------------------


def test_the_clients_file_is_read_by_the_servers_loader(loaded: LoadedMap, tmp_path: Path) -> None:
    written = AlignmentMap.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.weight, written.weight)
    np.testing.assert_array_equal(loaded.bias, written.bias)
    assert loaded.layers == (-2, 0)
    assert loaded.pooling == "mean"
    assert (loaded.source_model, loaded.target_model) == ("fake", "other/model")
    assert (loaded.input_size, loaded.output_size) == (16, 3)
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_allclose(loaded.apply(x), written.apply(x), rtol=1e-5, atol=1e-6)


def test_maps_come_from_flags_or_the_environment() -> None:
    settings, _ = parse_command_line(["--map", "a=/m/a.st", "--map", "b=/m/b.st,c=/c"], {})
    assert settings.maps == (("a", "/m/a.st"), ("b", "/m/b.st"), ("c", "/c"))
    settings, _ = parse_command_line([], {"LAMINA_MAP": "x=/maps/x.safetensors"})
    assert settings.maps == (("x", "/maps/x.safetensors"),)
    with pytest.raises(SystemExit):
        parse_command_line(["--map", "no-equals-sign"], {})


def test_files_that_cannot_be_served_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(MapError, match=r"cannot read map 'x' \(.*missing.st\)"):
        read_map("x", str(tmp_path / "missing.st"))
    states = tmp_path / "states.safetensors"
    safetensors.numpy.save_file({"layer.-2": np.zeros((2, 8), np.float32)}, str(states))
    with pytest.raises(MapError, match="not a Lamina map: it needs tensors weight and bias"):
        read_map("x", str(states))
    good = str(client_map(tmp_path / "m.safetensors"))
    with pytest.raises(MapError, match="map name 'x' is given twice"):
        read_maps([("x", good), ("x", good)])


def test_a_map_must_fit_the_served_model(loaded: LoadedMap) -> None:
    assert check_against_model(loaded, "fake", num_layers=4, hidden_size=8) is None
    with pytest.raises(MapError, match=r"takes vectors of 8 values per layer .* hidden size 16"):
        check_against_model(loaded, "fake", num_layers=4, hidden_size=16)
    with pytest.raises(MapError, match=r"reads layer -2, outside big's layers \(-1..0\)"):
        check_against_model(loaded, "big", num_layers=1, hidden_size=8)
    with pytest.raises(MapError, match="reads layer 0, which --allowed-layers does not allow"):
        check_against_model(loaded, "fake", 4, 8, allowed_layers=[-2, 1])
    warning = check_against_model(loaded, "renamed", num_layers=4, hidden_size=8)
    assert warning is not None
    assert "fitted on 'fake', this server serves 'renamed'" in warning


# -- requests ------------------------------------------------------------------------


def test_a_mapped_answer_is_the_map_applied_to_the_models_vectors(loaded: LoadedMap) -> None:
    r, engine = post({"to-other": loaded}, {"prompts": ["abc", "de"], "map": "to-other"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert MappedHiddenStatesResponse.model_validate(body).model_dump() == body
    for i, text in enumerate(("abc", "de")):
        np.testing.assert_allclose(body["hidden_states"][i], expected(engine, loaded, text), 1e-5)
        assert body["data"][i]["hidden_state"] == body["hidden_states"][i]
    assert body["layers"] == [-2, 0]
    assert body["resolved_layers"] == [2, 0]
    assert body["prompt_tokens"] == [3, 2]
    assert body["metadata"]["hidden_size"] == 3  # the answer's vectors
    assert body["metadata"]["pooling"] == "mean"
    assert body["map"]["name"] == "to-other"
    assert body["map"]["target_model"] == "other/model"


def test_a_mapped_answer_as_safetensors_and_per_token(tmp_path: Path) -> None:
    per_token = read_map("tokens", str(client_map(tmp_path / "t.st", (1,), "all")))
    r, engine = post(
        {"tokens": per_token},
        {"prompts": ["abc", "de"], "map": "tokens"},
        accept="application/octet-stream",
    )
    assert r.status_code == 200, r.text
    tensors = safetensors.numpy.load(r.content)
    assert {k: v.shape for k, v in tensors.items()} == {
        "prompt.0.mapped": (3, 3),
        "prompt.1.mapped": (2, 3),
    }
    want = engine.rows(engine.tokenize("de"), 1) @ per_token.weight + per_token.bias
    np.testing.assert_allclose(tensors["prompt.1.mapped"], want, rtol=1e-5)


def test_requests_that_conflict_with_the_map_or_name_no_map_are_4xx(loaded: LoadedMap) -> None:
    maps = {"to-other": loaded}
    same = post(maps, {"prompts": ["a"], "map": "to-other", "layers": [2, 0], "pooling": "mean"})
    assert same[0].status_code == 200  # the map's own layers, written another way

    r, _ = post(maps, {"prompts": ["a"], "map": "to-other", "layers": [-1]})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "map 'to-other' was fitted on layers [-2, 0] with pooling 'mean', not layers [-1] "
        "with pooling 'mean': leave out 'layers' and 'pooling', or ask for exactly these"
    )
    r, _ = post(maps, {"prompts": ["a"], "map": "to-other", "pooling": "last"})
    assert r.status_code == 422
    assert "with pooling 'mean', not layers [-2, 0] with pooling 'last'" in r.text

    r, _ = post(maps, {"prompts": ["a"], "map": "nope"})
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "no map 'nope' on this server; loaded maps: to-other",
        "type": "not_found_error",
        "code": 404,
    }
    r, _ = post({}, {"prompts": ["a"], "map": "nope"})
    assert "loaded maps: none (start the server with --map NAME=PATH)" in r.text


def test_health_lists_the_loaded_maps(loaded: LoadedMap) -> None:
    async def run() -> Any:
        client, _, _ = make_client(maps={"to-other": loaded})
        return (await client.get("/health")).json()

    assert asyncio.run(run())["maps"] == [
        {
            "name": "to-other",
            "source_model": "fake",
            "target_model": "other/model",
            "layers": [-2, 0],
            "target_layers": [-1],
            "pooling": "mean",
            "method": "ridge",
            "input_size": 16,
            "output_size": 3,
        }
    ]
