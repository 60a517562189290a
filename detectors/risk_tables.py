"""Fraud rates per cell, learned from delayed labels (online target encoding).

``RateTables`` keeps, per table and cell (an integer the caller derives from a transaction: a
bucket of the log-amount, or a combination of a counterparty's states), the exponentially
decayed count of labels and of frauds, and reports the Beta-smoothed fraud rate as a
log-odds, a scale on which a linear model can add evidence. A cell learns nothing from a
transaction until its label arrives, so a score never sees its own label; no threshold is
known in advance: the rates find where fraud concentrates, and a combination of states
lets the linear model downstream use an interaction it could not represent itself.

``TABLES`` names the tables the fraud detector keeps and ``cells`` computes a transaction's
cell in each from its model features.

>>> tables = RateTables()
>>> risky, safe = (24,) * len(TABLES), (12,) * len(TABLES)
>>> for i in range(50):
...     tables.learn(risky, i * 100.0, fraud=True)
...     tables.learn(safe, i * 100.0, fraud=False)
>>> tables.log_odds(risky, 5000.0)[0] > 2.0 > -2.0 > tables.log_odds(safe, 5000.0)[0]
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from detectors.counterparty import COUNTERPARTY_FEATURES
from detectors.profile import FEATURES, INDEX


def _log_bucket(value: float, per_unit: float = 8.0) -> int:
    return min(200, int(math.log1p(max(0.0, value)) * per_unit))


def _state(rate: float, recency: float) -> int:
    return 6 * round(5.0 * min(1.0, max(0.0, rate))) + round(5.0 * min(1.0, max(0.0, recency)))


#: The tables, in the order of ``cells``.
TABLES: Final = ("amount", "amount_to_mean", "counterparty_state", "counterparty_episode", "customer_state")

_BASE: Final = len(FEATURES)  # where the counterparty features start in a model vector
_LOG_AMOUNT, _AMOUNT_TO_MEAN, _CUST_FRAUDS = (
    INDEX[n] for n in ("log_amount", "amount_to_mean", "cust_frauds_14d"))
_CP_RATE, _CP_RECENCY, _CP_EPISODE = (
    _BASE + COUNTERPARTY_FEATURES.index(n)
    for n in ("cp_recent_label_rate", "cp_fraud_recency", "cp_episode_days"))


def cells(x: list[float]) -> tuple[int, ...]:
    """A transaction's cell in each of ``TABLES``, from its model vector (profile features
    followed by counterparty features)."""
    ratio, cp_rate = x[_AMOUNT_TO_MEAN], x[_CP_RATE]
    return (
        min(200, int(x[_LOG_AMOUNT] * 8.0)),
        _log_bucket(ratio),
        # A counterparty's recent labels and how recent its latest known fraud is, together.
        _state(cp_rate, x[_CP_RECENCY]),
        # ... and its recent labels by the age of its current run of frauds (in 4-day steps).
        16 * round(5.0 * min(1.0, cp_rate)) + min(15, int(x[_CP_EPISODE] / 4.0)),
        # A customer with confirmed recent fraud, by how unusual the amount is.
        (64 if x[_CUST_FRAUDS] > 0 else 0) + _log_bucket(ratio, 6.0),
    )


@dataclass(frozen=True, slots=True)
class RateTableParams:
    """Memory and prior of the learned rates."""

    halflife_days: float = 30.0
    prior_rate: float = 0.01
    prior_strength: float = 5.0


class RateTables:
    """Decayed (frauds, labels) per cell, one table per name in ``TABLES``."""

    def __init__(self, params: RateTableParams | None = None) -> None:
        p = self.params = params or RateTableParams()
        self.decay = math.log(2.0) / (p.halflife_days * 86400.0)
        self._prior = p.prior_rate * p.prior_strength
        unseen = self._prior / p.prior_strength
        self._unseen = math.log(unseen / (1.0 - unseen))
        self._tables: list[dict[int, list[float]]] = [{} for _ in TABLES]  # cell -> [frauds, labels, as of t]

    def log_odds(self, cells: tuple[int, ...], t: float) -> list[float]:
        """Smoothed log-odds of fraud in each table's cell as of event time ``t``."""
        out = []
        exp, log, decay, prior, strength = math.exp, math.log, self.decay, self._prior, self.params.prior_strength
        for table, cell in zip(self._tables, cells, strict=True):
            entry = table.get(cell)
            if entry is None:
                out.append(self._unseen)
                continue
            factor = exp(-decay * max(0.0, t - entry[2]))
            rate = (entry[0] * factor + prior) / (entry[1] * factor + strength)
            out.append(log(rate / (1.0 - rate)))
        return out

    def learn(self, cells: tuple[int, ...], known_at: float, fraud: bool) -> None:
        """A label for a transaction in these cells became known at ``known_at``."""
        for table, cell in zip(self._tables, cells, strict=True):
            entry = table.get(cell)
            if entry is None:
                entry = table[cell] = [0.0, 0.0, known_at]
            elif known_at > entry[2]:
                factor = math.exp(-self.decay * (known_at - entry[2]))
                entry[0] *= factor
                entry[1] *= factor
                entry[2] = known_at
            entry[0] += float(fraud)
            entry[1] += 1.0
