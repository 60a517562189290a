"""Ranking quality of a fraud score against labels, as scikit-learn defines it: ROC AUC and
average precision. The engine's prequential evaluation (``detectors.challengers``) and the
benchmarks (``bench.metrics``) both use these.

- ``roc_auc``: the Mann-Whitney statistic with average ranks for tied scores, i.e. the
  probability that a random fraud scores above a random legitimate transaction (ties
  count one half); ``sklearn.metrics.roc_auc_score``.
- ``average_precision``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds
  in decreasing order (tied scores form one threshold); ``sklearn.metrics.average_precision_score``.

Both are ``nan`` when undefined (no positive, or for AUC no negative, example).

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.8333
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _as_arrays(labels: Sequence[bool | int] | npt.ArrayLike,
               scores: Sequence[float] | npt.ArrayLike) -> tuple[BoolArray, FloatArray]:
    """Labels as booleans and scores as floats, checked for equal length and no NaN."""
    y = np.asarray(labels).astype(bool, copy=False).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} != {s.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def average_ranks(values: Sequence[float] | npt.ArrayLike) -> FloatArray:
    """1-based ranks of ``values`` in increasing order; tied values share their mean rank.

    >>> average_ranks([0.5, 0.1, 0.5, 0.9]).tolist()
    [2.5, 1.0, 2.5, 4.0]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # Start index (in sorted order) of each run of equal values, and the run lengths.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    lengths = np.diff(np.r_[starts, v.size])
    mean_rank = starts + (lengths + 1) / 2.0  # mean of the 1-based ranks start+1 .. start+length
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(labels: Sequence[bool | int] | npt.ArrayLike,
            scores: Sequence[float] | npt.ArrayLike) -> float:
    """Area under the ROC curve; ``nan`` without both classes.

    >>> roc_auc([0, 1], [0.2, 0.9]), roc_auc([0, 1], [0.9, 0.2]), roc_auc([0, 1], [0.5, 0.5])
    (1.0, 0.0, 0.5)
    >>> roc_auc([1, 1], [0.2, 0.9])
    nan
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(labels: Sequence[bool | int] | npt.ArrayLike,
                      scores: Sequence[float] | npt.ArrayLike) -> float:
    """Average precision (area under the step precision-recall curve); ``nan`` without positives.

    >>> average_precision([1, 0, 1], [0.9, 0.8, 0.7])  # P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1
    0.8333333333333333
    >>> average_precision([1, 0], [0.5, 0.5])  # one threshold: P = 1/2 at R = 1
    0.5
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    # Last index of each run of equal scores: one threshold per distinct score.
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tps = np.cumsum(y_desc)[ends].astype(np.float64)
    flagged = (ends + 1).astype(np.float64)
    precision = tps / flagged
    recall = tps / n_pos
    gains = np.diff(np.r_[0.0, recall])
    return float(np.sum(gains * precision))


def auc_and_average_precision(labels: Sequence[bool | int] | npt.ArrayLike,
                              scores: Sequence[float] | npt.ArrayLike) -> tuple[float, float]:
    """``roc_auc`` and ``average_precision`` from one sort (the engine's evaluations).

    >>> auc_and_average_precision([0, 0, 1, 1, 0], [0.1, 0.4, 0.4, 0.8, 0.8])
    (0.6666666666666666, 0.5)
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0:
        return math.nan, math.nan
    order = np.argsort(s)
    s_asc, y_asc = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s_asc[1:] != s_asc[:-1]])  # one group per distinct score
    lengths = np.diff(np.r_[starts, s.size])
    positives = np.add.reduceat(y_asc.astype(np.float64), starts)
    auc = math.nan
    if n_neg:
        rank_sum = float(positives @ (starts + (lengths + 1) / 2.0))
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    # Thresholds from the highest score down: the groups in reverse.
    tps = np.cumsum(positives[::-1])
    flagged = np.cumsum(lengths[::-1]).astype(np.float64)
    ap = float(np.sum(positives[::-1] / n_pos * (tps / flagged)))
    return auc, ap
