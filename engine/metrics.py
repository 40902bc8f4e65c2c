"""Detection metrics: matching, completeness, purity (DESIGN §6). numpy only.

Backend parity (detection level) is :mod:`clumpdet.engine.parity`.

Boxes are ``(x1, y1, x2, y2)`` float arrays in image pixels, pixel ``i`` spanning
``[i, i + 1)``: width ``x2 - x1``, centre ``(x1 + x2) / 2``. Predictions and
truths are matched **one-to-one, greedily by descending score** (ties: the
earlier prediction index goes first). The rule decides which free truths a
prediction may take:

``rule="centre"`` (primary)
    The prediction's centre lies inside the truth box, edges included:
    ``|dx| <= w / 2 and |dy| <= h / 2`` (``dx, dy`` centre offsets, ``w, h`` the
    truth's sides), i.e. ``max(|dx| / (w/2), |dy| / (h/2)) <= 1``. Among those,
    the smallest Euclidean centre distance (pixels) wins.
``rule="iou"``
    ``IoU >= iou_thresh``; the highest IoU wins.

Remaining ties go to the lowest truth index. ``class_aware=True`` also requires
equal labels. Empty cases: completeness without truth and purity without
predictions are ``nan``. Intervals are percentile intervals (central 68.27 %,
±1σ) of a bootstrap over *images*; replicates where the ratio is undefined are
left out; with ``n_boot=0`` (or no defined replicate) they are ``nan``.
COCO AP is :func:`clumpdet.engine.coco_eval.coco_ap`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clumpdet.engine.coco_eval import coco_ap

__all__ = [
    "CompletenessPurity", "Detections", "Truth", "coco_ap", "completeness_in_bins",
    "detections_from_batch", "evaluate", "format_markdown_table", "match", "match_all",
]

RULES = ("centre", "iou")
#: Central probability mass of the reported bootstrap intervals (±1σ).
CI_LEVEL = 0.6827
_CHUNK_ELEMENTS = 1 << 22  # bound on padded (images × preds × truths) per matching chunk


def _boxes(value: object, n_name: str) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.all(np.isfinite(boxes)):
        msg = f"metrics.py: {n_name} boxes must be a finite (N, 4) array, got shape {boxes.shape}"
        raise ValueError(msg)
    return boxes


def _column(value: object, n: int, name: str, dtype: type) -> np.ndarray:
    col = np.asarray(value, dtype=dtype).reshape(-1)
    if col.shape != (n,):
        msg = f"metrics.py: {name} must have shape ({n},), got {np.shape(value)}"
        raise ValueError(msg)
    return col


@dataclass(frozen=True)
class Detections:
    """One image's predictions.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(P, 4)`` float64, ``x1, y1, x2, y2`` in image pixels.
    scores : numpy.ndarray
        ``(P,)`` float64, finite.
    labels : numpy.ndarray
        ``(P,)`` int64 class ids (0, background, never appears).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes, "Detections")
        scores = _column(self.scores, len(boxes), "Detections.scores", np.float64)
        if not np.all(np.isfinite(scores)):
            msg = "metrics.py: Detections.scores must be finite"
            raise ValueError(msg)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", _column(self.labels, len(boxes), "Detections.labels", np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score_thresh: float) -> Detections:
        """The detections with ``score >= score_thresh``, in their original order."""
        keep = self.scores >= score_thresh
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


@dataclass(frozen=True)
class Truth:
    """One image's ground truth.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(T, 4)`` float64, ``x1, y1, x2, y2`` in image pixels.
    labels : numpy.ndarray
        ``(T,)`` int64 class ids.
    values : dict of str to numpy.ndarray
        Optional per-truth float64 columns of shape ``(T,)``, e.g. ``"flux_fraction"``.
    """

    boxes: np.ndarray
    labels: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes, "Truth")
        n = len(boxes)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", _column(self.labels, n, "Truth.labels", np.int64))
        values = {k: _column(v, n, f"Truth.values[{k!r}]", np.float64) for k, v in self.values.items()}
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return len(self.labels)


def detections_from_batch(num_dets, boxes, scores, labels) -> list[Detections]:
    """Split an exported model's padded outputs (DESIGN §3) into per-image :class:`Detections`.

    Parameters
    ----------
    num_dets : array_like
        ``(N,)`` int, valid rows per image.
    boxes, scores, labels : array_like
        ``(N, K, 4)`` float, ``(N, K)`` float, ``(N, K)`` int; rows past ``num_dets`` are ignored.
    """
    return [Detections(b[:n], s[:n], lab[:n]) for n, b, s, lab in
            zip(np.asarray(num_dets).astype(int), np.asarray(boxes), np.asarray(scores), np.asarray(labels))]


def _check_rule(rule: str, iou_thresh: float) -> None:
    if rule not in RULES:
        msg = f"metrics.py: rule must be one of {RULES}, got {rule!r}"
        raise ValueError(msg)
    if not 0.0 < iou_thresh <= 1.0:
        msg = f"metrics.py: iou_thresh must lie in (0, 1], got {iou_thresh!r}"
        raise ValueError(msg)


def _pad(arrays: list[np.ndarray], width: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged ``(n_i, ...)`` arrays into ``(len, width, ...)`` plus a validity mask."""
    counts = np.array([len(a) for a in arrays])
    flat = np.concatenate(arrays)
    rows = np.repeat(np.arange(len(arrays)), counts)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((len(arrays), width, *flat.shape[1:]), fill, dtype=flat.dtype)
    out[rows, cols] = flat
    valid = np.zeros((len(arrays), width), dtype=bool)
    valid[rows, cols] = True
    return out, valid


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def _quality(pb, tb, rule: str, iou_thresh: float) -> np.ndarray:
    """``(k, P, T)`` match quality (higher is better), ``-inf`` where not eligible."""
    p, t = pb[:, :, None, :], tb[:, None, :, :]
    if rule == "centre":
        dx = np.abs((p[..., 0] + p[..., 2]) - (t[..., 0] + t[..., 2])) / 2
        dy = np.abs((p[..., 1] + p[..., 3]) - (t[..., 1] + t[..., 3])) / 2
        ok = (dx <= (t[..., 2] - t[..., 0]) / 2) & (dy <= (t[..., 3] - t[..., 1]) / 2)
        return np.where(ok, -np.hypot(dx, dy), -np.inf)
    iw = np.clip(np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]), 0, None)
    inter = iw * ih
    union = _area(p) + _area(t) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.where(iou >= iou_thresh, iou, -np.inf)


def _match_chunk(preds, truths, rule, iou_thresh, class_aware) -> np.ndarray:
    """Greedy one-to-one matching of k images at once; returns ``(k, P)`` truth indices or -1."""
    width_p, width_t = max(map(len, preds)), max(map(len, truths))
    pb, pvalid = _pad([d.boxes for d in preds], width_p, 0.0)
    ps, _ = _pad([d.scores for d in preds], width_p, -np.inf)
    tb, tvalid = _pad([t.boxes for t in truths], width_t, 0.0)
    q = _quality(pb, tb, rule, iou_thresh)
    ok = pvalid[:, :, None] & tvalid[:, None, :]
    if class_aware:
        pl, _ = _pad([d.labels for d in preds], width_p, 0)
        tl, _ = _pad([t.labels for t in truths], width_t, 0)
        ok &= pl[:, :, None] == tl[:, None, :]
    q = np.where(ok, q, -np.inf)
    order = np.argsort(-ps, axis=1, kind="stable")  # descending score, earlier index first
    q = np.take_along_axis(q, order[:, :, None], axis=1)
    rows = np.arange(len(preds))
    taken = np.zeros((len(preds), width_t), dtype=bool)
    result_sorted = np.full((len(preds), width_p), -1, dtype=np.int64)
    for r in range(width_p):
        qr = np.where(taken, -np.inf, q[:, r, :])
        best = np.argmax(qr, axis=1)  # first maximum: lowest truth index on ties
        hit = qr[rows, best] > -np.inf
        result_sorted[hit, r] = best[hit]
        taken[rows[hit], best[hit]] = True
    result = np.empty_like(result_sorted)
    result[rows[:, None], order] = result_sorted
    return result


def match_all(preds: Sequence[Detections], truths: Sequence[Truth], *, rule: str = "centre",
              iou_thresh: float = 0.5, class_aware: bool = False) -> list[np.ndarray]:
    """:func:`match` for many images at once (vectorised over images).

    Returns
    -------
    list of numpy.ndarray
        One ``(P_i,)`` int64 array per image: matched truth index or -1.
    """
    _check_rule(rule, iou_thresh)
    if len(preds) != len(truths):
        msg = f"metrics.py: got {len(preds)} prediction sets but {len(truths)} truth sets"
        raise ValueError(msg)
    out = [np.full(len(d), -1, dtype=np.int64) for d in preds]
    todo = [i for i in range(len(preds)) if len(preds[i]) and len(truths[i])]
    todo.sort(key=lambda i: (len(preds[i]), len(truths[i])))  # similar sizes share a chunk
    start = 0
    while start < len(todo):
        stop, width_t = start, 0
        while stop < len(todo):
            i = todo[stop]
            width_t = max(width_t, len(truths[i]))
            if stop > start and (stop - start + 1) * len(preds[i]) * width_t > _CHUNK_ELEMENTS:
                break
            stop += 1
        chunk = todo[start:stop]
        result = _match_chunk([preds[i] for i in chunk], [truths[i] for i in chunk], rule, iou_thresh, class_aware)
        for row, i in enumerate(chunk):
            out[i] = result[row, : len(preds[i])]
        start = stop
    return out


def match(pred: Detections, truth: Truth, *, rule: str = "centre", iou_thresh: float = 0.5,
          class_aware: bool = False) -> np.ndarray:
    """Match one image's predictions to its truths (rules in the module docstring).

    Parameters
    ----------
    pred : Detections
        ``P`` predictions; all are used (no score threshold here).
    truth : Truth
        ``T`` true objects.
    rule : {"centre", "iou"}
        Eligibility and preference rule.
    iou_thresh : float
        Minimum IoU in ``(0, 1]`` for ``rule="iou"``.
    class_aware : bool
        Require ``pred.labels == truth.labels`` for a match.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` int64: index into ``truth`` of each prediction's match, or -1.
    """
    return match_all([pred], [truth], rule=rule, iou_thresh=iou_thresh, class_aware=class_aware)[0]


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _bootstrap_ci(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Percentile interval of ``sum(num) / sum(den)`` over images resampled with replacement.

    ``num, den``: ``(N, B)`` per-image counts. Returns ``(B, 2)``: low, high (``nan`` if undefined).
    """
    if n_boot < 0:
        msg = f"metrics.py: n_boot must be >= 0, got {n_boot}"
        raise ValueError(msg)
    n, bins = num.shape
    ci = np.full((bins, 2), np.nan)
    if n_boot == 0 or n == 0:
        return ci
    rng = np.random.default_rng(seed)
    reps = []
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        draw = rng.integers(0, n, size=(m, n)) + n * np.arange(m)[:, None]
        weights = np.bincount(draw.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
        reps.append(_ratio(weights @ num, weights @ den))
    reps = np.concatenate(reps)
    tail = 50.0 * (1.0 - CI_LEVEL)
    for b in range(bins):
        finite = reps[:, b][np.isfinite(reps[:, b])]
        if finite.size:
            ci[b] = np.percentile(finite, [tail, 100.0 - tail])
    return ci


@dataclass(frozen=True)
class CompletenessPurity:
    """Completeness and purity over a set of images, with bootstrap intervals (over images)."""

    completeness: float
    purity: float
    completeness_ci: tuple[float, float]
    purity_ci: tuple[float, float]
    n_true: int
    n_pred: int
    n_matched: int


def _filtered_matches(preds, truths, score_thresh, rule, iou_thresh, class_aware):
    kept = [d.above(score_thresh) for d in preds]
    return kept, match_all(kept, truths, rule=rule, iou_thresh=iou_thresh, class_aware=class_aware)


def evaluate(preds: Sequence[Detections], truths: Sequence[Truth], *, score_thresh: float,
             rule: str = "centre", iou_thresh: float = 0.5, class_aware: bool = False,
             n_boot: int = 1000, seed: int = 0) -> CompletenessPurity:
    """Completeness (matched truth / truth) and purity (matched predictions / predictions).

    Parameters
    ----------
    preds, truths : sequence of Detections, sequence of Truth
        One per image, same order.
    score_thresh : float
        Predictions with ``score < score_thresh`` are dropped first (the preset's
        ``PostProcessConfig.final_score_thresh``).
    rule, iou_thresh, class_aware
        As in :func:`match`.
    n_boot : int
        Bootstrap replicates (images resampled with replacement); 0 skips the intervals.
    seed : int
        Seed of the bootstrap's ``numpy.random.default_rng``.

    Returns
    -------
    CompletenessPurity
        ``completeness`` is ``nan`` without truth, ``purity`` ``nan`` without predictions.
    """
    kept, matches = _filtered_matches(preds, truths, score_thresh, rule, iou_thresh, class_aware)
    n_t = np.array([len(t) for t in truths], dtype=np.float64)
    n_p = np.array([len(d) for d in kept], dtype=np.float64)
    n_m = np.array([np.count_nonzero(m >= 0) for m in matches], dtype=np.float64)
    ci = _bootstrap_ci(np.stack([n_m, n_m], 1), np.stack([n_t, n_p], 1), n_boot, seed)
    return CompletenessPurity(
        completeness=float(_ratio(n_m.sum(), n_t.sum())), purity=float(_ratio(n_m.sum(), n_p.sum())),
        completeness_ci=(float(ci[0, 0]), float(ci[0, 1])), purity_ci=(float(ci[1, 0]), float(ci[1, 1])),
        n_true=int(n_t.sum()), n_pred=int(n_p.sum()), n_matched=int(n_m.sum()),
    )


def _binned(values: list[np.ndarray], hit: list[np.ndarray], bins, n_boot: int, seed: int) -> list[dict]:
    """Rows of matched/total per bin ``[lo, hi)`` of per-image ``values`` (``hit``: matched mask)."""
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
        msg = f"metrics.py: bins must be >= 2 strictly increasing edges, got {bins!r}"
        raise ValueError(msg)
    nb = len(edges) - 1
    counts = np.zeros((len(values), nb))
    matched = np.zeros((len(values), nb))
    for i, (v, h) in enumerate(zip(values, hit)):
        b = np.searchsorted(edges, v, side="right") - 1  # [lo, hi); nan lands out of range
        inside = (b >= 0) & (b < nb)
        counts[i] = np.bincount(b[inside], minlength=nb)
        matched[i] = np.bincount(b[inside & h], minlength=nb)
    ci = _bootstrap_ci(matched, counts, n_boot, seed)
    frac = _ratio(matched.sum(0), counts.sum(0))
    return [{"lo": float(edges[k]), "hi": float(edges[k + 1]), "n_true": int(counts[:, k].sum()),
             "n_matched": int(matched[:, k].sum()), "completeness": float(frac[k]),
             "ci_low": float(ci[k, 0]), "ci_high": float(ci[k, 1])} for k in range(nb)]


def completeness_in_bins(preds: Sequence[Detections], truths: Sequence[Truth], *, key: str,
                         bins: Sequence[float], score_thresh: float, rule: str = "centre",
                         iou_thresh: float = 0.5, class_aware: bool = False, n_boot: int = 1000,
                         seed: int = 0) -> list[dict]:
    """Completeness per bin ``[lo, hi)`` of ``truth.values[key]`` (e.g. clump flux fraction).

    Matching uses all truths and predictions (as :func:`evaluate`); truths are then binned
    by their value. Values outside ``[bins[0], bins[-1])`` or ``nan`` count in no bin.

    Returns
    -------
    list of dict
        One row per bin: ``lo, hi, n_true, n_matched, completeness, ci_low, ci_high``.
    """
    missing = [i for i, t in enumerate(truths) if len(t) and key not in t.values]
    if missing:
        msg = f"metrics.py: truth of image {missing[0]} has no values[{key!r}]"
        raise ValueError(msg)
    _, matches = _filtered_matches(preds, truths, score_thresh, rule, iou_thresh, class_aware)
    hit = []
    for t, m in zip(truths, matches):
        h = np.zeros(len(t), dtype=bool)
        h[m[m >= 0]] = True
        hit.append(h)
    values = [t.values.get(key, np.zeros(0)) for t in truths]
    return _binned(values, hit, bins, n_boot, seed)


def format_markdown_table(rows: Sequence[dict], *, digits: int = 4) -> str:
    """Render rows (dicts; columns in first-seen key order) as a GitHub Markdown table.

    Floats use ``digits`` significant digits; tuples are shown as ``[a, b]``; missing cells
    are empty.
    """

    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{digits}g}"
        if isinstance(v, tuple):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        return str(v)

    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) if c in r else "" for c in columns) + " |" for r in rows]
    return "\n".join(lines)
