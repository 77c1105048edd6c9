"""``lamina.fit_alignment``: fit a W-Matrix between two models from shared anchor prompts.

Collects both sides (:mod:`lamina.align_sources`), fits and reports with
:func:`lamina.align.align`, and packs the result as an :class:`~lamina.align_map.AlignmentMap`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .align import Alignment, AlignmentError, Method, Options, Scaling, align
from .align_map import AlignmentMap, MapFacts
from .align_sources import Collected, Source, check_pairs, collect, describe, prompt_set_sha256
from .wire import POOLINGS, Pooling, Prompt

Layers = int | Sequence[int]


def _layer_list(layers: Layers, name: str) -> tuple[int, ...]:
    try:
        values = (
            (operator.index(layers),)
            if not isinstance(layers, Sequence)
            else tuple(operator.index(v) for v in layers)
        )
    except TypeError:
        values = ()
    if not values:
        raise AlignmentError(f"{name} must be an int or a non-empty list of ints, not {layers!r}")
    return values


def held_out_metrics(a: Alignment) -> dict[str, Any]:
    """The report's numbers as plain JSON-ready data (also stored in the map file)."""
    return {
        "held_out_anchors": a.test_anchors,
        "held_out_rows": a.test_rows,
        "rows": [{"name": r.name, **asdict(r.metrics)} for r in a.rows],
        "chance": {"top1": a.chance_top1, "top5": a.chance_top5},
    }


@dataclass(frozen=True)
class AlignmentResult:
    """A fitted map, its held-out report, and where the vectors came from."""

    map: AlignmentMap
    alignment: Alignment
    source: str
    target: str

    def save(self, path: str) -> None:
        self.map.save(path)

    def metrics(self) -> dict[str, Any]:
        """Held-out metrics of the map and of each baseline, and retrieval's chance level."""
        return held_out_metrics(self.alignment)

    def to_dict(self) -> dict[str, Any]:
        facts = self.map.facts
        return {
            "source": {"from": self.source, **asdict(facts.source)},
            "target": {"from": self.target, **asdict(facts.target)},
            "pooling": facts.pooling,
            "method": facts.method,
            "center": facts.center,
            "scale": facts.scale,
            "projection": facts.projection,
            "lambda": facts.lam,
            "lambda_relative": facts.lam_relative,
            "anchors": facts.num_anchors,
            "train_anchors": facts.train_anchors,
            "prompt_set_sha256": facts.prompt_set_sha256,
            "metrics": self.metrics(),
            "notes": list(self.alignment.notes),
        }

    def table(self) -> str:
        """The report a person reads: setup, then the map and baselines on held-out anchors."""
        a, facts = self.alignment, self.map.facts
        lines = [
            f"anchors: {facts.num_anchors} prompts, {a.train_anchors} to fit, "
            f"{a.test_anchors} held out (seed {facts.seed}); pooling {facts.pooling}"
            + (f"; {a.train_rows} + {a.test_rows} token rows" if facts.pooling == "all" else ""),
        ]
        for role, side, where in (
            ("source", facts.source, self.source),
            ("target", facts.target, self.target),
        ):
            lines.append(
                f"{role}: {side.model or '?'} layers {list(side.layers)} "
                f"({side.size} values) from {where}"
            )
        method = f"method: {facts.method}, " + ("centred" if facts.center else "not centred")
        method += f", scale {facts.scale}"
        if facts.projection:
            method += f", projection {facts.projection}"
        if a.ridge is not None:
            method += (
                f"; λ = {a.ridge.lam_relative:.3g} × mean eigenvalue ({a.options.folds}-fold CV "
                f"over {len(a.ridge.cv)} values)"
            )
        lines += [method, ""]
        header = f"{'held out (' + str(a.test_rows) + ')':<18}"
        header += (
            f"{'epsilon':>9}{'orthogonality':>15}{'cosine':>9}{'R²':>9}{'top-1':>8}{'top-5':>8}"
        )
        lines.append(header)
        for row in a.rows:
            m = row.metrics
            # A near-perfect fit's epsilon would print as 0.0000.
            epsilon = f"{m.epsilon:.1e}" if 0 < m.epsilon < 1e-3 else f"{m.epsilon:.4f}"
            lines.append(
                f"{row.name:<18}{epsilon:>9}{m.orthogonality:>15.3f}{m.cosine:>9.4f}"
                f"{m.r2:>9.4f}{m.top1:>8.1%}{m.top5:>8.1%}"
            )
        lines.append(f"{'chance':<18}{'':>42}{a.chance_top1:>8.1%}{a.chance_top5:>8.1%}")
        lines += [f"note: {n}" for n in a.notes]
        return "\n".join(lines)


def _collect_both(
    source: Source,
    target: Source,
    prompts: Sequence[Prompt] | None,
    layers: tuple[tuple[int, ...], tuple[int, ...]],
    pooling: Pooling,
    revisions: tuple[str, str],
    client_args: dict[str, Any],
    progress: Callable[[int], None] | None,
) -> tuple[Collected, Collected]:
    # Two servers answer at once (two pods, or two processes on one machine).
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(
                collect,
                where,
                prompts,
                side_layers,
                pooling,
                revision=revision,
                progress=progress,
                **client_args,
            )
            for where, side_layers, revision in zip(
                (source, target), layers, revisions, strict=True
            )
        ]
        return futures[0].result(), futures[1].result()


def fit_alignment(
    source: Source,
    target: Source,
    prompts: Sequence[Prompt] | None = None,
    *,
    layers: Layers = -2,
    source_layers: Layers | None = None,
    target_layers: Layers | None = None,
    pooling: Pooling = "last",
    method: Method = "ridge",
    center: bool = True,
    scale: Scaling = "global",
    holdout: float = 0.2,
    folds: int = 5,
    lambdas: Sequence[float] | None = None,
    seed: int = 0,
    source_revision: str = "",
    target_revision: str = "",
    api_key: str | None = None,
    timeout: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> AlignmentResult:
    """Fit a W-Matrix mapping ``source``'s hidden states of ``prompts`` onto ``target``'s.

    ``source`` and ``target`` are each a :class:`~lamina.align_sources.Deployment`, a
    server URL, a :class:`~lamina.Client`, a ``.npy``/``.safetensors`` file written by
    ``lamina hidden-states`` (``prompts`` may then be None), or an array. ``layers`` (or
    per side ``source_layers``/``target_layers``) is one layer or several, concatenated
    (e.g. the ensemble ``[-4, -3, -2]``). ``method`` ``ridge`` (λ by ``folds``-fold
    cross-validation over ``lambdas``, multiples of the mean eigenvalue of XᵀX) or
    ``procrustes``; ``center``/``scale`` preprocess both sides; ``holdout`` of the
    anchors are kept out of the fit for the report. ``progress`` is called with the
    number of prompts each finished batch held (both sides). Raises
    :class:`~lamina.align.AlignmentError` with what to change when the data cannot give
    what was asked.

    >>> result = lamina.fit_alignment(
    ...     lamina.Deployment("llama-3-1-8b", "research"),
    ...     lamina.Deployment("qwen-2-5-7b", "research"),
    ...     anchors, layers=[-4, -3, -2], pooling="mean", method="procrustes")
    >>> print(result.table())
    >>> result.save("llama-to-qwen.safetensors")
    """
    if pooling not in POOLINGS:
        raise AlignmentError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    options = Options(
        method=method,
        center=center,
        scale=scale,
        holdout=holdout,
        folds=folds,
        lambdas=tuple(float(v) for v in lambdas) if lambdas is not None else None,
        seed=seed,
    )
    options.check()
    chosen = (
        _layer_list(layers if source_layers is None else source_layers, "source layers"),
        _layer_list(layers if target_layers is None else target_layers, "target layers"),
    )
    if prompts is not None:
        prompts = list(prompts)
        if not prompts:
            raise AlignmentError("prompts is empty: give the anchor prompts")
    client_args = {"api_key": api_key, "timeout": timeout}
    src, tgt = _collect_both(
        source,
        target,
        prompts,
        chosen,
        pooling,
        (source_revision, target_revision),
        client_args,
        progress,
    )
    check_pairs(src, tgt, pooling)
    fitted = align(src.rows, tgt.rows, src.groups, options)
    num_anchors = len(src.tokens)
    facts = MapFacts(
        source=src.side,
        target=tgt.side,
        pooling=pooling,
        method=method,
        center=center,
        scale=scale,
        projection=fitted.projection,
        lam=fitted.ridge.lam if fitted.ridge else None,
        lam_relative=fitted.ridge.lam_relative if fitted.ridge else None,
        metrics=held_out_metrics(fitted),
        prompt_set_sha256=prompt_set_sha256(prompts) if prompts is not None else "",
        num_anchors=num_anchors,
        train_anchors=fitted.train_anchors,
        test_anchors=fitted.test_anchors,
        holdout=holdout,
        folds=folds,
        seed=seed,
    )
    return AlignmentResult(_to_map(fitted, facts), fitted, describe(source), describe(target))


def _to_map(fitted: Alignment, facts: MapFacts) -> AlignmentMap:
    def f32(v: Any) -> Any:
        return np.ascontiguousarray(v, dtype=np.float32)

    return AlignmentMap(
        weight=f32(fitted.map.weight),
        bias=f32(fitted.map.bias),
        source_mean=f32(fitted.source.mean),
        source_scale=f32(fitted.source.scale),
        target_mean=f32(fitted.target.mean),
        target_scale=f32(fitted.target.scale),
        facts=facts,
    )
