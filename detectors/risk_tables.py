"""Fraud rates per cell, learned from delayed labels (online target encoding).

A ``RateTable`` keeps, per cell (an integer the caller derives from a transaction: a
bucket of the log-amount, or a combination of a counterparty's states), the exponentially
decayed count of labels and of frauds, and reports the Beta-smoothed fraud rate as a
log-odds, a scale on which a linear model can add evidence. A cell learns nothing from a
transaction until its label arrives, so a score never sees its own label; no threshold is
known in advance: the rates find where fraud concentrates, and a combination of states
lets the linear model downstream use an interaction it could not represent itself.

``CELLS`` names the tables the fraud detector keeps and how each cell is computed from the
model features.

>>> table = RateTable(halflife_days=30.0)
>>> for i in range(50):
...     table.learn(24, i * 100.0, fraud=True)
...     table.learn(12, i * 100.0, fraud=False)
>>> table.log_odds(24, 5000.0) > 2.0 > -2.0 > table.log_odds(12, 5000.0)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


def _log_bucket(value: float, per_unit: float = 8.0) -> int:
    return min(200, int(math.log1p(max(0.0, value)) * per_unit))


def _state(rate: float, recency: float) -> int:
    return 6 * round(5.0 * min(1.0, max(0.0, rate))) + round(5.0 * min(1.0, max(0.0, recency)))


#: Table name -> the cell of a transaction, from its model features.
CELLS: Final[dict[str, Callable[[dict[str, float]], int]]] = {
    "amount": lambda x: min(200, int(x["log_amount"] * 8.0)),
    "amount_to_mean": lambda x: _log_bucket(x["amount_to_mean"]),
    # A counterparty's recent labels and how recent its latest known fraud is, together.
    "counterparty_state": lambda x: _state(x["cp_recent_label_rate"], x["cp_fraud_recency"]),
    # ... and its recent labels by the age of its current run of frauds (in 4-day steps).
    "counterparty_episode": lambda x: 16 * round(5.0 * min(1.0, x["cp_recent_label_rate"]))
    + min(15, int(x["cp_episode_days"] / 4.0)),
    # A customer with confirmed recent fraud, by how unusual the amount is.
    "customer_state": lambda x: (64 if x["cust_frauds_14d"] > 0 else 0) + _log_bucket(x["amount_to_mean"], 6.0),
}


@dataclass(frozen=True, slots=True)
class RateTableParams:
    """Memory and prior of the learned rates."""

    halflife_days: float = 30.0
    prior_rate: float = 0.01
    prior_strength: float = 5.0


class RateTable:
    """Decayed (frauds, labels) per cell."""

    def __init__(self, halflife_days: float = 30.0, prior_rate: float = 0.01, prior_strength: float = 5.0) -> None:
        self.decay = math.log(2.0) / (halflife_days * 86400.0)
        self.prior_rate, self.prior_strength = prior_rate, prior_strength
        self._counts: dict[int, list[float]] = {}  # cell -> [frauds, labels, as of t]

    @classmethod
    def of(cls, params: RateTableParams) -> RateTable:
        return cls(params.halflife_days, params.prior_rate, params.prior_strength)

    def log_odds(self, cell: int, t: float) -> float:
        """Smoothed log-odds of fraud in ``cell`` as of event time ``t``."""
        entry = self._counts.get(cell)
        frauds = labels = 0.0
        if entry is not None:
            factor = math.exp(-self.decay * max(0.0, t - entry[2]))
            frauds, labels = entry[0] * factor, entry[1] * factor
        rate = (frauds + self.prior_rate * self.prior_strength) / (labels + self.prior_strength)
        return math.log(rate / (1.0 - rate))

    def learn(self, cell: int, known_at: float, fraud: bool) -> None:
        """A label for a transaction in ``cell`` became known at ``known_at``."""
        entry = self._counts.get(cell)
        if entry is None:
            entry = self._counts[cell] = [0.0, 0.0, known_at]
        elif known_at > entry[2]:
            factor = math.exp(-self.decay * (known_at - entry[2]))
            entry[0] *= factor
            entry[1] *= factor
            entry[2] = known_at
        entry[0] += float(fraud)
        entry[1] += 1.0
