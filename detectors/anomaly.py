"""Unsupervised anomaly score of a transaction's profile features (River Half-Space Trees).

``AnomalyModel.score_learn(Z)`` takes a batch of squashed feature rows, in stream order, and
returns each row's anomaly score in [0, 1] (a high score is indicative of an anomaly) as of
just before that row was learned; it then learns the row. Score before learn holds row by
row, exactly as a loop of River's ``score_one`` then ``learn_one`` would give. Its input is
``squash(features)``: the profile features mapped into [0, 1] with fixed scales, because
Half-Space Trees split the unit cube.

The trees are River's: ``river_splits`` draws River's splits (same seed, same draws); their
masses then live in numpy arrays so that a whole batch is scored and learned
at once. That is exact, not an approximation: a Half-Space Trees score reads only the
reference masses, which change at window ends only, so rows between two window ends are
scored by the same function and their learning is a count of visits per node
(``tests/test_detectors.py`` checks the scores against River's one by one).

>>> import numpy as np
>>> m = AnomalyModel(AnomalyParams(window_size=20, seed=1))
>>> normal = squash_rows([[4.0, 1.0] + [0.0] * 12])
>>> _ = m.score_learn(np.repeat(normal, 60, axis=0))
>>> odd = squash_rows([[9.0, 30.0, 2.0, 0.0, 0.0, 0.0, 1.0] + [0.0] * 7])
>>> bool(m.score_learn(odd)[0] > m.score_learn(normal)[0])
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from schemas.snapshots import restore_fields

#: The squashed features, by name, and their scales; a value v >= 0 maps to
#: 1 - exp(-v / scale). Flags use scale 0.5.
SCALES: Final = {
    "log_amount": 6.0, "amount_to_mean": 4.0, "cnt_1h": 1.0, "velocity_1d": 4.0,
    "hours_since_prev": 4.0, "new_counterparty": 0.5, "new_device": 0.5, "new_country": 0.5,
    "night": 0.5, "security_change_24h": 0.5, "failed_logins_1h": 2.0, "small_cnt_1h": 3.0,
    "outflow_of_inflow_24h": 0.5, "near_threshold_cash_3d": 1.0,
}
SQUASHED: Final = tuple(SCALES)
_RATES: Final = -1.0 / np.array([SCALES[name] for name in SQUASHED])


@dataclass(frozen=True, slots=True)
class AnomalyParams:
    """Size of the forest; larger is smoother and slower."""

    n_trees: int = 5
    height: int = 6
    window_size: int = 250
    seed: int = 42

    __setstate__ = restore_fields


def squash_rows(rows: Any) -> np.ndarray:
    """Rows of the ``SQUASHED`` features (in that order) mapped into [0, 1]."""
    x = np.asarray(rows, dtype=np.float64)
    return np.where(x > 0.0, 1.0 - np.exp(x * _RATES), 0.0)


#: River's padding of a split: a threshold is drawn away from the edges of its cell.
PADDING: Final = 0.15


def river_splits(names: tuple[str, ...], n_trees: int, height: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The splits River's ``HalfSpaceTrees(n_trees, height, seed=seed)`` draws for features
    ``names`` in the unit cube, as arrays in breadth-first order (the children of node ``i``
    are ``2i+1`` and ``2i+2``): each inner node's feature index and threshold, (trees, nodes).

    The same random draws in the same order as ``river.tree.padded.make_padded_tree`` (a
    feature weighted by the width of its cell, then a padded uniform threshold; the left
    subtree first), so the trees are River's; drawn here so that the engine does not import
    River's anomaly package (and, with it, scipy.stats) only to build them.
    """
    rng = random.Random(seed)
    order = sorted(names)
    index = {name: i for i, name in enumerate(names)}
    n_inner = 2**height - 1
    feature = np.zeros((n_trees, n_inner), dtype=np.intp)
    threshold = np.zeros((n_trees, n_inner))

    def grow(tree: int, node: int, depth: int, limits: dict[str, tuple[float, float]]) -> None:
        if depth == height:
            return
        on = rng.choices(population=list(limits), weights=[high - low for low, high in limits.values()])[0]
        low, high = limits[on]
        at = rng.uniform(low + PADDING * (high - low), high - PADDING * (high - low))
        feature[tree, node], threshold[tree, node] = index[on], at
        grow(tree, 2 * node + 1, depth + 1, {**limits, on: (low, at)})
        grow(tree, 2 * node + 2, depth + 1, {**limits, on: (at, high)})

    for tree in range(n_trees):
        grow(tree, 0, 0, dict.fromkeys(order, (0.0, 1.0)))
    return feature, threshold


class AnomalyModel:
    """River's Half-Space Trees on squashed profile features, scored and learned in batches."""

    def __init__(self, params: AnomalyParams | None = None) -> None:
        self.params = params or AnomalyParams()
        p = self.params
        self.feature, self.threshold = river_splits(SQUASHED, p.n_trees, p.height, p.seed)  # (trees, inner nodes)
        n_nodes = 2 ** (p.height + 1) - 1
        self.l_mass = np.zeros((p.n_trees, n_nodes), dtype=np.int64)  # the window being learned
        self.r_mass = np.zeros((p.n_trees, n_nodes), dtype=np.int64)  # the reference window
        self.counter = 0  # rows learned in the current window
        self.n_seen = 0
        self._depth_weight = 2.0 ** np.arange(p.height + 1)
        self._max_score = p.n_trees * p.window_size * (2 ** (p.height + 1) - 1)
        self._trees = np.arange(p.n_trees)
        self._tree_offset = self._trees * n_nodes  # node index -> index into l_mass.ravel()

    def _paths(self, z: np.ndarray) -> np.ndarray:
        """Node index of every row in every tree at every depth: (rows, trees, height + 1)."""
        height = self.params.height
        node = np.zeros((z.shape[0], self.params.n_trees), dtype=np.intp)
        paths = np.empty((z.shape[0], self.params.n_trees, height + 1), dtype=np.intp)
        rows = np.arange(z.shape[0])[:, None]
        for depth in range(height):
            paths[:, :, depth] = node
            right = z[rows, self.feature[self._trees, node]] >= self.threshold[self._trees, node]
            node = 2 * node + 1 + right
        paths[:, :, height] = node
        return paths

    def _score(self, paths: np.ndarray) -> np.ndarray:
        if self.n_seen < self.params.window_size:
            return np.zeros(paths.shape[0])
        mass = self.r_mass[self._trees[None, :, None], paths]  # (rows, trees, depth)
        # River stops walking down after the first node whose mass is under the size limit.
        small = mass < 0.1 * self.params.window_size
        reached = np.ones_like(small)
        reached[:, :, 1:] = np.logical_not(np.cumsum(small[:, :, :-1], axis=2))
        score = (mass * reached * self._depth_weight).sum(axis=(1, 2))
        return 1.0 - score / self._max_score

    def score_learn(self, z: np.ndarray) -> np.ndarray:
        """Score every row of ``z`` (rows, ``SQUASHED``) as of before it, learning it after."""
        window = self.params.window_size
        paths = self._paths(z)
        scores = np.empty(z.shape[0])
        start = 0
        while start < z.shape[0]:
            # Rows up to the end of the current window are scored by the same reference masses.
            stop = min(z.shape[0], start + window - self.counter)
            part = paths[start:stop]
            scores[start:stop] = self._score(part)
            visits = (part + self._tree_offset[None, :, None]).ravel()
            self.l_mass += np.bincount(visits, minlength=self.l_mass.size).reshape(self.l_mass.shape)
            self.counter += stop - start
            self.n_seen += stop - start
            if self.counter == window:
                self.r_mass, self.l_mass = self.l_mass, np.zeros_like(self.l_mass)
                self.counter = 0
            start = stop
        return scores
