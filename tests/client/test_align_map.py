"""The map file (``lamina.AlignmentMap``): saved, read back, applied; bad files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lamina.align_map import AlignmentMap, MapFacts, MapFileError, Side
from safetensors import safe_open
from safetensors.numpy import save_file


def a_map(dx_layers: int = 2, hidden: int = 3, dy: int = 4) -> AlignmentMap:
    rng = np.random.default_rng(0)
    dx = dx_layers * hidden
    facts = MapFacts(
        source=Side("org/source", "abc123", tuple(range(-dx_layers - 1, -1)), hidden),
        target=Side("org/target", "", (-2,), dy),
        pooling="mean",
        method="ridge",
        center=True,
        scale="global",
        lam=0.25,
        lam_relative=1e-3,
        metrics={"rows": [{"name": "ridge", "epsilon": 0.1}]},
        prompt_set_sha256="f" * 64,
        num_anchors=100,
        train_anchors=80,
        test_anchors=20,
        holdout=0.2,
        folds=5,
        seed=7,
    )

    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return AlignmentMap(f32(dx, dy), f32(dy), f32(dx), f32(dx), f32(dy), f32(dy), facts)


def test_a_saved_map_reads_back_the_same(tmp_path: Path) -> None:
    m = a_map()
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = AlignmentMap.load(path)
    assert back.facts == m.facts
    for name in ("weight", "bias", "source_mean", "source_scale", "target_mean", "target_scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    # What other readers (the server, a user's script) rely on.
    assert meta["format"] == "lamina-align-map/1"
    assert meta["source_layers"] == "[-3, -2]"
    assert meta["source_model"] == "org/source"
    assert meta["source_revision"] == "abc123"
    assert meta["pooling"] == "mean"
    assert meta["lambda"] == "0.25"
    assert meta["center"] == "true"


def test_apply_takes_rows_layer_stacks_and_single_vectors() -> None:
    m = a_map()
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    want = (x.astype(np.float64) @ m.weight + m.bias).astype(np.float32)
    np.testing.assert_allclose(m.apply(x), want, rtol=1e-6)
    np.testing.assert_allclose(m.apply(x.reshape(5, 2, 3)), want, rtol=1e-6)
    np.testing.assert_allclose(m.apply(x[0]), want[0], rtol=1e-6)
    assert m.apply(x).dtype == np.float32
    with pytest.raises(ValueError, match=r"it takes 6 values per row \(2 layer\(s\) \[-3, -2\]"):
        m.apply(np.zeros((5, 7)))


def test_inconsistent_shapes_are_refused() -> None:
    m = a_map()
    with pytest.raises(MapFileError, match=r"bias has shape \[3\], expected \[4\]"):
        AlignmentMap(
            m.weight,
            m.bias[:3],
            m.source_mean,
            m.source_scale,
            m.target_mean,
            m.target_scale,
            m.facts,
        )


def test_files_that_are_not_maps_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(MapFileError, match="cannot read the map"):
        AlignmentMap.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(MapFileError, match="cannot read the map"):
        AlignmentMap.load(junk)
    states = tmp_path / "states.safetensors"
    save_file({"layer.-2": np.zeros((3, 4), np.float32)}, str(states))
    with pytest.raises(MapFileError, match="not a Lamina map: no tensor weight"):
        AlignmentMap.load(states)
    m = a_map()
    other = tmp_path / "other.safetensors"
    tensors = {n: getattr(m, n) for n in ("weight", "bias", "source_mean", "source_scale")}
    tensors |= {"target_mean": m.target_mean, "target_scale": m.target_scale}
    save_file(tensors, str(other), metadata={**m.facts.to_metadata(), "format": "other/2"})
    with pytest.raises(MapFileError, match="format 'other/2'"):
        AlignmentMap.load(other)
