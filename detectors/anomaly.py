"""Unsupervised anomaly score of a transaction's profile features (River Half-Space Trees).

``AnomalyModel.score_one(z)`` is in [0, 1]; a high score is indicative of an anomaly. It
needs no labels, so it carries detection before any feedback exists. Its input is
``squash(features)``: the profile features mapped into [0, 1] with fixed scales, because
Half-Space Trees split the unit cube (squash once, then score and learn with the result).
Score before learn: ``score_one`` never changes the model, ``learn_one`` does.

>>> m = AnomalyModel(AnomalyParams(window_size=20, seed=1))
>>> normal = squash({"log_amount": 4.0, "amount_to_mean": 1.0, "cnt_1h": 0.0})
>>> for _ in range(60):
...     m.learn_one(normal)
>>> odd = squash({"log_amount": 9.0, "amount_to_mean": 30.0, "cnt_1h": 2.0, "new_device": 1.0})
>>> m.score_one(odd) > m.score_one(normal)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from river import anomaly

#: Feature -> scale; a value v >= 0 maps to 1 - exp(-v / scale). Flags use scale 0.5.
SCALES: Final = {
    "log_amount": 6.0, "amount_to_mean": 4.0, "cnt_1h": 1.0, "velocity_1d": 4.0,
    "hours_since_prev": 4.0, "new_counterparty": 0.5, "new_device": 0.5, "new_country": 0.5,
    "night": 0.5, "security_change_24h": 0.5, "failed_logins_1h": 2.0, "small_cnt_1h": 3.0,
    "outflow_of_inflow_24h": 0.5, "near_threshold_cash_3d": 1.0,
}


@dataclass(frozen=True, slots=True)
class AnomalyParams:
    """Size of the forest; larger is smoother and slower."""

    n_trees: int = 5
    height: int = 6
    window_size: int = 250
    seed: int = 42


_RATES: Final = tuple((name, -1.0 / scale) for name, scale in SCALES.items())


def squash(x: dict[str, float]) -> dict[str, float]:
    """Map the modelled features into [0, 1] (amount z-scores are folded in via the ratio)."""
    exp, get = math.exp, x.get
    return {name: 1.0 - exp(rate * v) if (v := get(name, 0.0)) > 0.0 else 0.0 for name, rate in _RATES}


class AnomalyModel:
    """Half-Space Trees on squashed profile features."""

    def __init__(self, params: AnomalyParams | None = None) -> None:
        self.params = params or AnomalyParams()
        p = self.params
        self.model = anomaly.HalfSpaceTrees(
            n_trees=p.n_trees, height=p.height, window_size=p.window_size, seed=p.seed)
        self.n_seen = 0

    def score_one(self, z: dict[str, float]) -> float:
        """Anomaly score in [0, 1] of squashed features; 0 until the first window is full."""
        if self.n_seen < self.params.window_size:
            return 0.0
        return float(self.model.score_one(z))

    def learn_one(self, z: dict[str, float]) -> None:
        self.model.learn_one(z)
        self.n_seen += 1
