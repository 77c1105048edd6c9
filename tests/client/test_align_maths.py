"""The W-Matrix maths (``lamina.align``) on synthetic data with a known answer.

scipy is not in the project's environment, so Procrustes is checked against an
independent route to the same matrix (the polar factor ``M (MᵀM)^-1/2`` from an
eigendecomposition, which is what ``scipy.linalg.orthogonal_procrustes`` returns via
the SVD) and by its optimality among nearby orthogonal matrices.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from lamina import align as A

F64 = npt.NDArray[np.float64]


def rotation(d: int, seed: int) -> F64:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    result: F64 = q * np.sign(np.diag(r))
    return result


def anchors(n: int, d: int, seed: int = 0) -> F64:
    """Vectors with an offset and unequal spread per direction, like hidden states."""
    rng = np.random.default_rng(seed)
    result: F64 = rng.standard_normal((n, d)) * np.linspace(0.3, 3.0, d) + 2.0
    return result


def relative_error(got: F64, want: F64) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def by_name(alignment: A.Alignment) -> dict[str, A.Metrics]:
    return {row.name: row.metrics for row in alignment.rows}


# -- Procrustes -------------------------------------------------------------------


def test_procrustes_recovers_a_rotation_and_the_error_goes_to_zero_with_the_noise() -> None:
    x = anchors(400, 32)
    r = rotation(32, 1)
    noise = np.random.default_rng(2).standard_normal(x.shape)
    levels = [1e-1, 1e-2, 1e-4, 1e-6, 0.0]
    errors = []
    for sigma in levels:
        fitted = A.align(x, x @ r + sigma * noise, options=A.Options(method="procrustes"))
        errors.append(relative_error(fitted.map.weight, r))
        assert np.abs(fitted.map.bias).max() <= 10 * sigma + 1e-12
    assert errors == sorted(errors, reverse=True), errors
    # Proportional to the noise: a hundredth of the noise, a hundredth of the error.
    for sigma, error in zip(levels[:-1], errors[:-1], strict=True):
        assert error <= sigma, (sigma, error)
    assert errors[-1] <= 1e-12


def test_procrustes_is_the_polar_factor_that_scipy_computes() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 6))
    # scipy.linalg.orthogonal_procrustes(x, y) is the orthogonal polar factor of xᵀy;
    # computed here without an SVD: M (MᵀM)^(-1/2).
    m = x.T @ y
    w, v = np.linalg.eigh(m.T @ m)
    polar = m @ v @ np.diag(w**-0.5) @ v.T
    (fit,) = A.fit_procrustes(x, [y])
    np.testing.assert_allclose(fit.core, polar, atol=1e-10)
    np.testing.assert_allclose(fit.core.T @ fit.core, np.eye(6), atol=1e-12)


def test_no_nearby_orthogonal_matrix_fits_better() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((80, 5))
    y = x @ rotation(5, 5) + 0.3 * rng.standard_normal((80, 5))
    (fit,) = A.fit_procrustes(x, [y])
    best = np.linalg.norm(x @ fit.core - y)
    for _ in range(200):
        skew = rng.standard_normal((5, 5)) * 0.05
        q, r = np.linalg.qr(np.eye(5) + skew - skew.T)
        nudge = q * np.sign(np.diag(r))  # an orthogonal matrix close to the identity
        assert np.linalg.norm(x @ (fit.core @ nudge) - y) >= best


def test_different_sizes_are_projected_onto_principal_axes_and_recorded() -> None:
    rng = np.random.default_rng(6)
    latent = rng.standard_normal((300, 6)) * np.linspace(1, 3, 6)
    wide = np.linalg.qr(rng.standard_normal((12, 6)))[0]  # 6 orthonormal columns in 12-d
    narrow_rotation = rotation(6, 7)

    # Source 12-d (the signal lives in 6 directions, the rest is faint), target 6-d.
    x = latent @ wide.T + 1e-3 * rng.standard_normal((300, 12))
    down = A.align(x, latent @ narrow_rotation, options=A.Options(method="procrustes"))
    assert down.projection == "pca:source:6"
    assert down.core.shape == (12, 6)
    assert by_name(down)["procrustes"].epsilon < 5e-3
    assert by_name(down)["procrustes"].orthogonality == pytest.approx(1.0)

    # Source 6-d, target 12-d: the target is the source rotated into 6 of 12 dimensions.
    up = A.align(latent, latent @ wide.T, options=A.Options(method="procrustes"))
    assert up.projection == "pca:target:6"
    assert up.core.shape == (6, 12)
    assert by_name(up)["procrustes"].epsilon < 1e-10
    assert by_name(up)["procrustes"].orthogonality == pytest.approx(1.0)
    assert "identity" not in by_name(up)  # no identity between different sizes


# -- ridge --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(60, 20), (15, 40)], ids=["tall", "wide"])
def test_ridge_weight_is_the_closed_form_solution(n: int, d: int) -> None:
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, 3))
    spec = A.spectrum(x)
    z = spec.v.T @ (x.T @ y)
    for lam in (1e-3, 1.0, 100.0):
        want = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
        np.testing.assert_allclose(A.ridge_weight(spec, z, lam), want, rtol=1e-8, atol=1e-10)


def test_cross_validated_errors_equal_fitting_each_fold_and_lambda() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((60, 20))
    y = x @ rng.standard_normal((20, 7)) + rng.standard_normal((60, 7))
    folds = A.assign_folds(np.arange(60), 5, seed=0)
    lambdas = A.lambda_grid(x, [1e-3, 1e-1, 10.0])
    got = A.cv_errors(x, [y], folds, lambdas)[0]
    # The same from all rows' XᵀX and XᵀY minus each fold's (no training-row copies).
    from_products = A.cv_errors(x, [y], folds, lambdas, A.products(x, [y]))[0]
    np.testing.assert_allclose(from_products, got, rtol=1e-9)
    want = []
    for lam in lambdas:
        squared = 0.0
        for f in range(5):
            train, held = folds != f, folds == f
            w = np.linalg.solve(x[train].T @ x[train] + lam * np.eye(20), x[train].T @ y[train])
            squared += float(np.sum((x[held] @ w - y[held]) ** 2))
        want.append(squared / float(np.sum(y**2)))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_cross_validation_picks_the_lambda_that_does_best_on_new_data() -> None:
    rng = np.random.default_rng(10)
    d, true_w = 40, rng.standard_normal((40, 5)) / 8
    scales = np.geomspace(0.05, 5, d)

    def sample(n: int) -> tuple[F64, F64]:
        x = rng.standard_normal((n, d)) * scales
        return x, x @ true_w + rng.standard_normal((n, 5))

    x, y = sample(120)
    (fit,) = A.fit_ridge(x, [y], np.arange(120), 5, A.DEFAULT_LAMBDAS, seed=0)
    fresh_x, fresh_y = sample(20000)
    spec = A.spectrum(x)
    z = spec.v.T @ (x.T @ y)

    def fresh_error(lam: float) -> float:
        return float(np.sum((fresh_x @ A.ridge_weight(spec, z, lam) - fresh_y) ** 2))

    on_grid = [fresh_error(lam) for lam in A.lambda_grid(x, A.DEFAULT_LAMBDAS)]
    assert min(on_grid) < on_grid[0]  # regularisation matters for this data
    assert fresh_error(fit.lam) <= 1.02 * min(on_grid)


def test_cross_validation_picks_little_regularisation_for_clean_data_and_most_for_noise() -> None:
    x = anchors(200, 10)
    clean = A.align(x, x @ rotation(10, 11), options=A.Options(method="ridge"))
    assert clean.ridge is not None
    assert clean.ridge.lam_relative == min(A.DEFAULT_LAMBDAS)
    noise = np.random.default_rng(12).standard_normal((200, 10))
    unrelated = A.align(x, noise, options=A.Options(method="ridge"))
    assert unrelated.ridge is not None
    assert unrelated.ridge.lam_relative >= 10  # × the mean eigenvalue: a map near zero
    assert any("barely predicts" in note for note in unrelated.notes)
    assert not clean.notes


# -- metrics and baselines ----------------------------------------------------------


def test_orthogonality_score_is_one_for_orthogonal_maps_and_zero_for_the_zero_map() -> None:
    r = rotation(8, 13)
    assert A.orthogonality_score(r) == pytest.approx(1.0)
    assert A.orthogonality_score(r[:, :5]) == pytest.approx(1.0)  # semi-orthogonal, tall
    assert A.orthogonality_score(r[:5, :]) == pytest.approx(1.0)  # semi-orthogonal, wide
    assert A.orthogonality_score(np.zeros((8, 8))) == 0.0
    # 2R: G = 4I, ‖G − I‖ = 3√8, ‖G‖ + √8 = 5√8.
    assert A.orthogonality_score(2 * r) == pytest.approx(1 - 3 / 5)


def test_retrieval_counts_ties_against_the_map() -> None:
    truth = np.random.default_rng(14).standard_normal((20, 4))
    assert np.all(A.retrieval_ranks(truth, truth) == 0)
    # A map that says the same thing for every input finds one partner by luck.
    same = np.tile(truth[3], (20, 1))
    assert int(np.sum(A.retrieval_ranks(same, truth) == 0)) == 1
    assert np.all(A.retrieval_ranks(np.zeros((20, 4)), truth) == 19)


def test_a_learned_map_beats_the_baselines_and_shuffled_pairs_are_at_chance() -> None:
    x = anchors(500, 24)
    y = x @ rotation(24, 15) + 0.05 * np.random.default_rng(16).standard_normal((500, 24))
    for method in A.METHODS:
        fitted = A.align(x, y, options=A.Options(method=method))
        rows = by_name(fitted)
        assert list(rows) == [method, "identity", "zero map", "shuffled pairs"]
        mapped, zero, shuffled = rows[method], rows["zero map"], rows["shuffled pairs"]
        assert mapped.r2 > 0.99
        assert mapped.cosine > 0.99
        assert mapped.top1 == 1.0
        # Chance is 1 in 100 held-out anchors; 5 or more hits by luck has p < 0.004.
        assert fitted.chance_top1 == 1 / 100
        assert shuffled.top1 < 0.05
        assert shuffled.top5 < 0.15
        assert shuffled.r2 < 0.05
        assert zero.r2 == pytest.approx(0.0, abs=0.05)  # the training mean, no better
        assert zero.epsilon < 1.0  # the offset is learned...
        assert mapped.epsilon < zero.epsilon / 10  # ...but only the map explains the rest


def test_preprocessing_is_folded_into_one_weight_and_bias() -> None:
    rng = np.random.default_rng(17)
    x = rng.standard_normal((100, 6)) * [1, 10, 0.1, 1, 5, 2] + 3
    y = rng.standard_normal((100, 4)) * [2, 0.5, 1, 1] - 1
    fitted = A.align(x, y, options=A.Options(scale="feature"))
    train = x[:10]
    by_hand = fitted.target.mean + (
        (train - fitted.source.mean) / fitted.source.scale @ fitted.core * fitted.target.scale
    )
    np.testing.assert_allclose(fitted.map.apply(train), by_hand, rtol=1e-10)
    off = A.align(x, y, options=A.Options(center=False, scale="none"))
    assert np.all(off.source.mean == 0)
    assert np.all(off.source.scale == 1)
    np.testing.assert_array_equal(off.map.weight, off.core)


def test_an_anchors_tokens_stay_on_one_side_of_the_split() -> None:
    groups = np.repeat(np.arange(40), 3)  # 40 prompts of 3 tokens
    train, test = A.holdout_split(groups, 0.25, folds=5, seed=0)
    assert len(test) == 30
    assert not set(groups[train]) & set(groups[test])
    folds = A.assign_folds(groups[train], 5, seed=0)
    for g in np.unique(groups[train]):
        assert len(set(folds[groups[train] == g])) == 1


def test_too_few_anchors_say_how_many_are_needed() -> None:
    need = A.min_anchors(0.2, 5)
    assert need == 23  # 5 held out, 18 >= 2 per fold
    x = anchors(need - 1, 4)
    with pytest.raises(A.AlignmentError, match=f"give at least {need} prompts"):
        A.align(x, x)
    A.align(anchors(need, 4), anchors(need, 4, seed=1))


def test_rows_that_do_not_pair_up_are_refused() -> None:
    with pytest.raises(A.AlignmentError, match="must pair up"):
        A.align(anchors(30, 4), anchors(31, 4))
    bad = anchors(30, 4)
    bad[3, 1] = np.nan
    with pytest.raises(A.AlignmentError, match="NaN"):
        A.align(bad, anchors(30, 4))
