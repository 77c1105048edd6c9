"""W-Matrix maths: a linear map from one model's hidden states onto another's (pure numpy).

Rows of ``x`` ``[n, dx]`` (source) and ``y`` ``[n, dy]`` (target) are paired: the same
anchor prompt (or token) seen by two models. :func:`align` holds out a share of the
anchors, fits a map on the rest and reports held-out metrics next to baselines.

* **Preprocessing** (recorded, folded into the map): optional centring (subtract the
  training mean) and scaling: ``global`` divides a side by the RMS length of its
  centred vectors (one number, so orthogonal maps stay orthogonal), ``feature`` by
  each coordinate's standard deviation. The fit solves for a *core* ``W`` between
  the preprocessed spaces; :func:`fold` turns it into ``y = x @ weight + bias`` in the
  models' own spaces.
* **Ridge**: ``W = argmin ‖XW − Y‖² + λ‖W‖²``, λ chosen by k-fold cross-validation
  over a grid of multiples of the mean eigenvalue of ``XᵀX`` (scale-free). One
  decomposition per fold serves every λ: with ``X = U S Vᵀ``, the fold's held-out
  error is a quadratic form in ``1/(s² + λ)``.
* **Orthogonal Procrustes**: ``W = U Vᵀ`` from the SVD of ``XᵀY``, the orthogonal
  matrix closest to mapping X onto Y. When the sizes differ the larger side is first
  projected onto its top principal axes (the smaller size), recorded as
  ``pca:source:<k>`` or ``pca:target:<k>`` and folded into ``W``.

Metrics (:class:`Metrics`) are computed on the held-out rows in the target model's own
space, i.e. on what :meth:`LinearMap.apply` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Method = Literal["ridge", "procrustes"]
Scaling = Literal["none", "global", "feature"]

METHODS: tuple[Method, ...] = ("ridge", "procrustes")
SCALINGS: tuple[Scaling, ...] = ("none", "global", "feature")
# λ / mean eigenvalue of XᵀX: from almost no regularisation to much more than the data.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 2, 17))
MIN_HELD_OUT = 5  # anchors: top-5 retrieval needs at least five candidates
RETRIEVAL_CHUNK = 1024  # rows of the similarity matrix held at once


class AlignmentError(ValueError):
    """The data cannot give what was asked (too few anchors, bad options); the message
    says what to change."""


# -- preprocessing -------------------------------------------------------------------


@dataclass(frozen=True)
class Standardizer:
    """``(v - mean) / scale`` per coordinate; zeros and ones when switched off."""

    mean: F64
    scale: F64

    def forward(self, v: F64) -> F64:
        out = v - self.mean
        out /= self.scale  # in place: hidden-state matrices are large
        return out


def fit_standardizer(v: F64, center: bool, scaling: Scaling) -> Standardizer:
    """Mean and scale of the rows of ``v`` as ``center`` and ``scaling`` ask."""
    d = v.shape[1]
    mean = v.mean(axis=0) if center else np.zeros(d)
    centred = v - mean
    if scaling == "global":
        rms = float(np.sqrt(np.mean(np.sum(centred * centred, axis=1))))
        scale = np.full(d, rms if rms > 0 else 1.0)
    elif scaling == "feature":
        scale = np.sqrt(np.mean(centred * centred, axis=0))
        scale[scale == 0] = 1.0  # a constant coordinate stays as it is
    else:
        scale = np.ones(d)
    return Standardizer(mean, scale)


@dataclass(frozen=True)
class LinearMap:
    """``y = x @ weight + bias`` between the models' own spaces."""

    weight: F64  # [dx, dy]
    bias: F64  # [dy]

    def apply(self, x: F64) -> F64:
        return x @ self.weight + self.bias


def fold(core: F64, source: Standardizer, target: Standardizer) -> LinearMap:
    """The map ``x -> target⁻¹(source(x) @ core)`` as one weight and bias."""
    weight = core / source.scale[:, None] * target.scale[None, :]
    bias = target.mean - (source.mean / source.scale) @ core * target.scale
    return LinearMap(weight, bias)


# -- ridge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spectrum:
    """The non-zero part of ``X = U diag(s) Vᵀ``: ``s²`` and ``V``."""

    s2: F64  # [r]
    v: F64  # [d, r]


def gram_spectrum(gram: F64, n: int) -> Spectrum:
    """``s²`` and ``V`` of an ``n``-row ``X`` from its Gram matrix ``XᵀX``: one d × d
    eigendecomposition, far cheaper than an SVD of a tall ``X`` (see ``bench/align``);
    in float64 the squared condition number does not matter for ridge."""
    s2, v = np.linalg.eigh(gram)
    return _nonzero(s2, v, max(n, len(gram)))


def spectrum(x: F64) -> Spectrum:
    """``s²`` and ``V`` of ``x``: :func:`gram_spectrum` for ``n ≥ d``, else the thin SVD."""
    n, d = x.shape
    if n >= d:
        return gram_spectrum(x.T @ x, n)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return _nonzero(s * s, vt.T, d)


def _nonzero(s2: F64, v: F64, size: int) -> Spectrum:
    top = float(s2.max()) if s2.size else 0.0
    keep = s2 > top * size * np.finfo(np.float64).eps
    return Spectrum(s2[keep], v[:, keep])


def lambda_grid(x: F64, relative: Sequence[float]) -> F64:
    """Absolute λ values: ``relative`` × the mean eigenvalue of ``XᵀX``."""
    mean_eigenvalue = float(np.sum(x * x)) / x.shape[1]
    return np.asarray(relative, dtype=np.float64) * (mean_eigenvalue or 1.0)


def ridge_weight(spec: Spectrum, z: F64, lam: float) -> F64:
    """``(XᵀX + λI)⁻¹XᵀY`` given ``z = VᵀXᵀY``."""
    return spec.v @ (z / (spec.s2 + lam)[:, None])


def assign_folds(groups: Ints, folds: int, seed: int) -> Ints:
    """Fold of each row; rows of one group (one prompt's tokens) share a fold."""
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    fold_of_group[order] = np.arange(len(unique)) % folds
    result: Ints = fold_of_group[np.searchsorted(unique, groups)]
    return result


@dataclass(frozen=True)
class Products:
    """``XᵀX`` and each ``XᵀY`` over all rows of tall data: a fold's are these minus its
    held-out rows' (no fold copies its training rows)."""

    gram: F64
    crosses: list[F64]


def products(x: F64, ys: Sequence[F64]) -> Products | None:
    """:class:`Products` when ``x`` has at least as many rows as columns, else None."""
    if len(x) < x.shape[1]:
        return None
    return Products(x.T @ x, [x.T @ y for y in ys])


def training_parts(
    x: F64, ys: Sequence[F64], held: npt.NDArray[np.bool_], given: Products | None
) -> tuple[Spectrum, list[F64]]:
    """The :class:`Spectrum` of the rows not ``held`` and ``Z = VᵀXₜᵀY`` for each ``y``."""
    train_rows = len(x) - int(held.sum())
    if given is not None and train_rows >= x.shape[1]:
        if not held.any():
            spec = gram_spectrum(given.gram, train_rows)
            return spec, [spec.v.T @ c for c in given.crosses]
        xh = x[held]
        spec = gram_spectrum(given.gram - xh.T @ xh, train_rows)
        return spec, [
            spec.v.T @ (c - xh.T @ y[held]) for c, y in zip(given.crosses, ys, strict=True)
        ]
    xt = x[~held]
    spec = spectrum(xt)
    return spec, [spec.v.T @ (xt.T @ y[~held]) for y in ys]


def cv_errors(
    x: F64, ys: Sequence[F64], fold_of_row: Ints, lambdas: F64, given: Products | None = None
) -> F64:
    """Relative cross-validated error ``Σ‖XᵥW_λ − Yᵥ‖² / Σ‖Yᵥ‖²`` of each ``y`` in ``ys``
    (rows) for each λ (columns).

    Per fold one decomposition of the training rows (:func:`training_parts`); with
    ``A = XᵥV``, ``Z = VᵀXₜᵀYₜ`` and ``g = 1/(s² + λ)`` the held-out error is
    ``gᵀ(AᵀA ∘ ZZᵀ)g − 2gᵀ rowsum(AᵀYᵥ ∘ Z) + ‖Yᵥ‖²``: O(r²) per λ after the fold's
    products, instead of a prediction per λ.
    """
    errors = np.zeros((len(ys), len(lambdas)))
    totals = np.zeros(len(ys))
    for f in np.unique(fold_of_row):
        held = fold_of_row == f
        spec, zs = training_parts(x, ys, held, given)
        a = x[held] @ spec.v
        ata = a.T @ a
        g = 1.0 / (spec.s2[None, :] + lambdas[:, None])  # [λ, r]
        for k, (y, z) in enumerate(zip(ys, zs, strict=True)):
            gram_z = z @ z.T
            gram_z *= ata  # in place: one r × r temporary, not two
            quadratic = np.sum((g @ gram_z) * g, axis=1)
            linear = g @ np.einsum("ij,ij->i", a.T @ y[held], z)
            const = float(np.sum(y[held] * y[held]))
            # Rounding can push a near-perfect fit's error below zero.
            errors[k] += np.maximum(quadratic - 2 * linear + const, 0.0)
            totals[k] += const
    result: F64 = errors / np.where(totals > 0, totals, 1.0)[:, None]
    return result


@dataclass(frozen=True)
class RidgeFit:
    core: F64
    lam: float  # absolute, on the preprocessed data
    lam_relative: float  # over the mean eigenvalue of XᵀX
    cv: tuple[tuple[float, float], ...]  # (relative λ, cross-validated relative error)


def fit_ridge(
    x: F64, ys: Sequence[F64], groups: Ints, folds: int, relative: Sequence[float], seed: int
) -> list[RidgeFit]:
    """Ridge maps from ``x`` to each of ``ys``, λ chosen by ``folds``-fold CV (folds by
    group); the decompositions of ``x`` are shared by every ``y``."""
    lambdas = lambda_grid(x, relative)
    given = products(x, ys)
    errors = cv_errors(x, ys, assign_folds(groups, folds, seed), lambdas, given)
    spec, zs = training_parts(x, ys, np.zeros(len(x), dtype=bool), given)
    fits = []
    for z, err in zip(zs, errors, strict=True):
        # The last of equal minima: the most regularised of equally good maps.
        best = len(err) - 1 - int(np.argmin(err[::-1]))
        fits.append(
            RidgeFit(
                core=ridge_weight(spec, z, float(lambdas[best])),
                lam=float(lambdas[best]),
                lam_relative=float(relative[best]),
                cv=tuple((float(r), float(e)) for r, e in zip(relative, err, strict=True)),
            )
        )
    return fits


# -- orthogonal Procrustes -------------------------------------------------------------


def nearest_orthogonal(m: F64) -> F64:
    """``U Vᵀ`` of ``m = U S Vᵀ``: the orthogonal ``R`` maximising ``tr(Rᵀm)``."""
    u, _, vt = np.linalg.svd(m)
    result: F64 = u @ vt
    return result


def principal_axes(v: F64, k: int) -> F64:
    """The ``k`` directions of largest ``Σ row²`` of ``v`` as columns ``[d, k]``; with
    fewer rows than ``k`` the trailing axes complete the basis but carry no signal."""
    _, vectors = np.linalg.eigh(v.T @ v)
    result: F64 = vectors[:, ::-1][:, :k]
    return result


@dataclass(frozen=True)
class ProcrustesFit:
    core: F64
    projection: str | None  # "pca:source:<k>" or "pca:target:<k>" when sizes differ


def fit_procrustes(x: F64, ys: Sequence[F64]) -> list[ProcrustesFit]:
    """Orthogonal maps from ``x`` to each of ``ys`` (of one size); a larger side is first
    projected onto its top principal axes (computed once for ``x``)."""
    dx = x.shape[1]
    dy = ys[0].shape[1]
    if dx == dy:
        return [ProcrustesFit(nearest_orthogonal(x.T @ y), None) for y in ys]
    if dx > dy:
        p = principal_axes(x, dy)
        xp = x @ p
        return [ProcrustesFit(p @ nearest_orthogonal(xp.T @ y), f"pca:source:{dy}") for y in ys]
    fits = []
    for y in ys:
        q = principal_axes(y, dx)
        fits.append(ProcrustesFit(nearest_orthogonal(x.T @ (y @ q)) @ q.T, f"pca:target:{dx}"))
    return fits


# -- metrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """How well a map does on held-out pairs (see README, "Cross-model alignment").

    ``epsilon`` ``‖XW − Y‖_F / ‖Y‖_F`` (0 is perfect; the seeds' "finalEpsilon");
    ``orthogonality`` of the core map (:func:`orthogonality_score`); ``cosine`` the mean
    cosine of mapped and true vectors; ``r2`` ``1 − Σ‖XW − Y‖² / Σ‖Y − mean(Y)‖²``;
    ``top1``/``top5`` the share of mapped vectors whose true partner is among the 1/5
    most cosine-similar held-out targets (ties counted against the map).
    """

    epsilon: float
    orthogonality: float
    cosine: float
    r2: float
    top1: float
    top5: float


def orthogonality_score(core: F64) -> float:
    """``1 − ‖G − I‖_F / (‖G‖_F + √k)`` with ``G`` the Gram matrix of the smaller side
    (``WᵀW`` when ``dx ≥ dy``, else ``WWᵀ``; ``k`` its size): 1 for an orthogonal (or
    semi-orthogonal) map, 0 for the zero map, in [0, 1] always."""
    dx, dy = core.shape
    gram = core.T @ core if dx >= dy else core @ core.T
    k = gram.shape[0]
    distance = float(np.linalg.norm(gram - np.eye(k)))
    return 1.0 - distance / (float(np.linalg.norm(gram)) + float(np.sqrt(k)))


def _unit_rows(v: F64) -> F64:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    result: F64 = v / np.where(norms > 0, norms, 1.0)
    return result


def retrieval_ranks(mapped: F64, truth: F64) -> Ints:
    """For each mapped row, how many other true rows are at least as cosine-similar to
    it as its own partner (0 = retrieved first; ties count against it)."""
    m, t = _unit_rows(mapped), _unit_rows(truth)
    ranks = np.empty(len(m), dtype=np.int64)
    for start in range(0, len(m), RETRIEVAL_CHUNK):
        sim = m[start : start + RETRIEVAL_CHUNK] @ t.T
        rows = np.arange(sim.shape[0])
        own = sim[rows, start + rows]
        ranks[start : start + len(sim)] = np.sum(sim >= own[:, None], axis=1) - 1
    return ranks


def evaluate(mapped: F64, truth: F64, core: F64) -> Metrics:
    """:class:`Metrics` of ``mapped`` against ``truth`` (held-out rows)."""
    residual = float(np.sum((mapped - truth) ** 2))
    spread = float(np.sum((truth - truth.mean(axis=0)) ** 2))
    size = float(np.sum(truth * truth))
    cosines = np.sum(_unit_rows(mapped) * _unit_rows(truth), axis=1)
    ranks = retrieval_ranks(mapped, truth)
    return Metrics(
        epsilon=float(np.sqrt(residual / size)) if size > 0 else 0.0,
        orthogonality=orthogonality_score(core),
        cosine=float(cosines.mean()),
        r2=1.0 - residual / spread if spread > 0 else 0.0,
        top1=float(np.mean(ranks < 1)),
        top5=float(np.mean(ranks < 5)),
    )


# -- the whole fit -----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How to fit: method, preprocessing, held-out share, CV folds, λ grid (multiples of
    the mean eigenvalue of ``XᵀX``; None: :data:`DEFAULT_LAMBDAS`), random seed."""

    method: Method = "ridge"
    center: bool = True
    scale: Scaling = "global"
    holdout: float = 0.2
    folds: int = 5
    lambdas: tuple[float, ...] | None = None
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS:
            raise AlignmentError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.scale not in SCALINGS:
            raise AlignmentError(f"scale must be one of {', '.join(SCALINGS)}, not {self.scale!r}")
        if not 0 < self.holdout < 1:
            raise AlignmentError(f"holdout must be between 0 and 1, not {self.holdout}")
        if self.folds < 2:
            raise AlignmentError(f"folds must be at least 2, not {self.folds}")
        if self.lambdas is not None and (not self.lambdas or min(self.lambdas) <= 0):
            raise AlignmentError("lambdas must be positive numbers")


@dataclass(frozen=True)
class Row:
    """One line of the report: a map (fitted or baseline) and its held-out metrics."""

    name: str
    metrics: Metrics


@dataclass(frozen=True)
class Alignment:
    """A fitted map and its report: :attr:`rows` holds the map first, then baselines."""

    map: LinearMap  # fitted on the training anchors only, so the report describes it
    core: F64
    source: Standardizer
    target: Standardizer
    options: Options
    projection: str | None
    ridge: RidgeFit | None
    rows: tuple[Row, ...]
    train_anchors: int
    test_anchors: int
    train_rows: int
    test_rows: int
    notes: tuple[str, ...]

    @property
    def chance_top1(self) -> float:
        return 1.0 / self.test_rows

    @property
    def chance_top5(self) -> float:
        return min(5, self.test_rows) / self.test_rows


def min_anchors(holdout: float, folds: int) -> int:
    """The fewest anchors :func:`holdout_split` accepts."""
    n = 1
    while round(n * holdout) < MIN_HELD_OUT or n - round(n * holdout) < 2 * folds:
        n += 1
    return n


def holdout_split(groups: Ints, holdout: float, folds: int, seed: int) -> tuple[Ints, Ints]:
    """Training and held-out row indices; whole groups (anchors) go to one side."""
    unique = np.unique(groups)
    n = len(unique)
    held = round(n * holdout)
    if held < MIN_HELD_OUT or n - held < 2 * folds:
        raise AlignmentError(
            f"too few anchors: {n} prompts cannot give a held-out share of {holdout:g} of at "
            f"least {MIN_HELD_OUT} prompts and {2 * folds} or more to fit with {folds}-fold "
            f"cross-validation; give at least {min_anchors(holdout, folds)} prompts, or "
            "change --holdout / --folds"
        )
    chosen = np.random.default_rng(seed).permutation(unique)[:held]
    is_held = np.isin(groups, chosen)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _check_pairs(x: F64, y: F64, groups: Ints) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise AlignmentError(f"expected [rows, hidden] matrices, got {x.shape} and {y.shape}")
    if len(x) != len(y) or len(groups) != len(x):
        raise AlignmentError(
            f"the source has {len(x)} rows and the target {len(y)}: they must pair up "
            "(the same prompts, in the same order)"
        )
    for name, v in (("source", x), ("target", y)):
        if not np.isfinite(v).all():
            raise AlignmentError(f"the {name} vectors hold NaN or infinite values")


def align(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    options: Options | None = None,
) -> Alignment:
    """Fit a map from ``x`` onto ``y`` on the training anchors and report it on the
    held-out ones next to the baselines: the identity (when the sizes agree) and zero
    cores through the same preprocessing, and the same method fitted on shuffled
    training pairs. ``groups`` names the anchor of each row (default: one row each;
    rows of one prompt's tokens share an anchor)."""
    options = options or Options()
    options.check()
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    anchors = np.arange(len(xs)) if groups is None else np.asarray(groups, dtype=np.int64)
    _check_pairs(xs, ys, anchors)
    return _fit_and_report(xs, ys, anchors, options)


def _fit_and_report(x: F64, y: F64, groups: Ints, options: Options) -> Alignment:
    train, test = holdout_split(groups, options.holdout, options.folds, options.seed)
    x_train, y_train = x[train], y[train]
    source = fit_standardizer(x_train, options.center, options.scale)
    target = fit_standardizer(y_train, options.center, options.scale)
    xt, yt = source.forward(x_train), target.forward(y_train)
    del x_train, y_train  # large: the standardised copies replace them
    shuffled = yt[np.random.default_rng(options.seed + 1).permutation(len(yt))]

    ridge: RidgeFit | None = None
    projection: str | None = None
    if options.method == "ridge":
        ridge, ridge_shuffled = fit_ridge(
            xt,
            [yt, shuffled],
            groups[train],
            options.folds,
            options.lambdas or DEFAULT_LAMBDAS,
            options.seed,
        )
        core, core_shuffled = ridge.core, ridge_shuffled.core
    else:
        fitted, fitted_shuffled = fit_procrustes(xt, [yt, shuffled])
        core, core_shuffled, projection = fitted.core, fitted_shuffled.core, fitted.projection

    dx, dy = x.shape[1], y.shape[1]
    cores: list[tuple[str, F64]] = [(options.method, core)]
    if dx == dy:
        cores.append(("identity", np.eye(dx)))
    cores += [("zero map", np.zeros((dx, dy))), ("shuffled pairs", core_shuffled)]
    x_test, y_test = x[test], y[test]
    rows = tuple(
        Row(name, evaluate(fold(c, source, target).apply(x_test), y_test, c)) for name, c in cores
    )
    train_anchors = len(np.unique(groups[train]))
    notes = []
    if options.method == "procrustes" and train_anchors <= min(dx, dy):
        notes.append(
            f"{train_anchors} training anchors for {min(dx, dy)} dimensions: an orthogonal map "
            "is not determined by so few pairs; give more prompts or use ridge"
        )
    if ridge is not None:
        explained = 1.0 - min(error for _, error in ridge.cv)
        if explained < 0.05:
            notes.append(
                f"in cross-validation the map explains {max(explained, 0.0):.1%} of the target's "
                "variation: the source barely predicts the target"
            )
    return Alignment(
        map=fold(core, source, target),
        core=core,
        source=source,
        target=target,
        options=options,
        projection=projection,
        ridge=ridge,
        rows=rows,
        train_anchors=train_anchors,
        test_anchors=len(np.unique(groups[test])),
        train_rows=len(train),
        test_rows=len(test),
        notes=tuple(notes),
    )
