"""Detection-quality metrics without scikit-learn: ROC AUC, average precision, card precision@k.

All functions take plain sequences (or numpy arrays) and return Python floats. They follow
the scikit-learn definitions, so figures are comparable with published baselines:

- ``roc_auc`` and ``average_precision``: from ``detectors.quality``, where the engine's own
  prequential evaluation takes them too.
- ``card_precision_at_k``: the "card precision top-k" of the Fraud Detection Handbook
  (Le Borgne et al.): for each day, rank the cards (customers) by their highest score of
  the day, take the ``k`` first and count the share that had a fraud that day; the mean
  over days. Like the handbook, a day's count is divided by ``k`` even when fewer than
  ``k`` cards were active. The simple version is the default: cards already detected on an
  earlier day are *not* removed (``exclude_detected=True`` in ``card_precision_by_day``
  gives the handbook's variant that removes them).

Metrics that are undefined (no positive or no negative example) are ``nan``.

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.8333
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from detectors.quality import _as_arrays, average_precision, average_ranks, roc_auc

__all__ = ["average_precision", "average_ranks", "card_precision_at_k", "card_precision_by_day",
           "precision_recall_at_threshold", "roc_auc"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def precision_recall_at_threshold(labels: Sequence[bool | int] | npt.ArrayLike,
                                  scores: Sequence[float] | npt.ArrayLike,
                                  threshold: float) -> tuple[float, float]:
    """Precision and recall when every score ``>= threshold`` is flagged.

    An empty denominator gives 0.0 (scikit-learn's ``zero_division=0``).

    >>> precision_recall_at_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.35)
    (0.6666666666666666, 1.0)
    >>> precision_recall_at_threshold([0, 1], [0.1, 0.2], 0.9)
    (0.0, 0.0)
    """
    y, s = _as_arrays(labels, scores)
    flagged = s >= threshold
    tp = int(np.count_nonzero(flagged & y))
    n_flagged = int(np.count_nonzero(flagged))
    n_pos = int(np.count_nonzero(y))
    precision = tp / n_flagged if n_flagged else 0.0
    recall = tp / n_pos if n_pos else 0.0
    return precision, recall


def card_precision_by_day(days: npt.ArrayLike, cards: npt.ArrayLike, scores: npt.ArrayLike,
                          labels: npt.ArrayLike, k: int = 100,
                          exclude_detected: bool = False) -> list[tuple[int, float]]:
    """Card precision@k of every day present, as ``(day, precision)`` in day order.

    ``days`` and ``cards`` are integer codes (one per transaction). A card's score on a day
    is its highest transaction score that day; it is a fraud that day if any of its
    transactions that day is. Ties in score keep the lower card code first. With
    ``exclude_detected`` cards found (in the top k and fraudulent) on an earlier day are
    left out of later days' rankings, as in the handbook's ``card_precision_top_k``.

    >>> card_precision_by_day([0, 0, 0, 1, 1], [1, 1, 2, 1, 3], [0.9, 0.1, 0.5, 0.7, 0.8],
    ...                       [False, False, True, True, False], k=1)
    [(0, 0.0), (1, 0.0)]
    >>> args = ([0, 0, 1, 1], [1, 2, 1, 2], [0.9, 0.1, 0.9, 0.1], [True, False, False, True])
    >>> card_precision_by_day(*args, k=1), card_precision_by_day(*args, k=1, exclude_detected=True)
    ([(0, 1.0), (1, 0.0)], [(0, 1.0), (1, 1.0)])
    """
    if k <= 0:
        raise ValueError("k must be positive")
    d = np.asarray(days, dtype=np.int64).ravel()
    c = np.asarray(cards, dtype=np.int64).ravel()
    y, s = _as_arrays(labels, scores)
    if not d.size == c.size == s.size:
        raise ValueError("days, cards, scores and labels differ in length")
    if d.size == 0:
        return []
    order = np.lexsort((c, d))
    d, c, s, y = d[order], c[order], s[order], y[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])])
    g_day, g_card = d[starts], c[starts]
    g_score = np.maximum.reduceat(s, starts)
    g_fraud = np.logical_or.reduceat(y, starts)
    day_starts = np.flatnonzero(np.r_[True, g_day[1:] != g_day[:-1]])
    day_ends = np.r_[day_starts[1:], g_day.size]
    detected: set[int] = set()
    result: list[tuple[int, float]] = []
    for lo, hi in zip(day_starts, day_ends, strict=True):
        cards_day, score_day, fraud_day = g_card[lo:hi], g_score[lo:hi], g_fraud[lo:hi]
        if exclude_detected and detected:
            keep = ~np.isin(cards_day, np.fromiter(detected, dtype=np.int64))
            cards_day, score_day, fraud_day = cards_day[keep], score_day[keep], fraud_day[keep]
        top = np.argsort(-score_day, kind="mergesort")[:k]
        hits = fraud_day[top]
        result.append((int(g_day[lo]), float(np.count_nonzero(hits)) / k))
        if exclude_detected:
            detected.update(int(card) for card in cards_day[top][hits])
    return result


def card_precision_at_k(rows: Iterable[tuple[str, str, float, bool]], k: int = 100) -> float:
    """Mean over days of the card precision@k; rows are ``(day, customer, score, is_fraud)``.

    ``day`` and ``customer`` are any hashable labels (e.g. ``"2018-04-01"``, ``"cust7"``);
    ``nan`` when there are no rows. See ``card_precision_by_day`` for the definition.

    >>> rows = [("d1", "a", 0.9, False), ("d1", "a", 0.2, True), ("d1", "b", 0.5, False),
    ...         ("d1", "c", 0.1, True), ("d2", "a", 0.3, False), ("d2", "b", 0.8, True)]
    >>> card_precision_at_k(rows, k=2)  # d1: a (fraud), b -> 1/2; d2: b (fraud), a -> 1/2
    0.5
    """
    day_codes: dict[object, int] = {}
    card_codes: dict[object, int] = {}
    days: list[int] = []
    cards: list[int] = []
    scores: list[float] = []
    labels: list[bool] = []
    for day, card, score, is_fraud in rows:
        days.append(day_codes.setdefault(day, len(day_codes)))
        cards.append(card_codes.setdefault(card, len(card_codes)))
        scores.append(float(score))
        labels.append(bool(is_fraud))
    per_day = card_precision_by_day(days, cards, scores, labels, k)
    if not per_day:
        return math.nan
    return float(np.mean([p for _, p in per_day]))
