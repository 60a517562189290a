"""Fraud rates per cell, learned from delayed labels (online target encoding).

``RateTables`` keeps, per table and cell (an integer the caller derives from a transaction: a
bucket of the log-amount, or a combination of a counterparty's states), the exponentially
decayed count of labels and of frauds, and reports the Beta-smoothed fraud rate as a
log-odds, a scale on which a linear model can add evidence. A cell learns nothing from a
transaction until its label arrives, so a score never sees its own label; no threshold is
known in advance: the rates find where fraud concentrates, and a combination of states
lets the linear model downstream use an interaction it could not represent itself.

``TABLES`` names the tables the fraud detector keeps and ``cells_batch`` computes each
transaction's cell in each from its model features, for a batch of transactions at once.

>>> tables = RateTables()
>>> risky, safe = (24,) * len(TABLES), (12,) * len(TABLES)
>>> for i in range(50):
...     tables.learn(risky, i * 100.0, fraud=True)
...     tables.learn(safe, i * 100.0, fraud=False)
>>> batched = RateTables()
>>> batched.learn_batch(np.array([risky, safe] * 50), np.repeat(np.arange(50) * 100.0, 2), np.tile([1.0, 0.0], 50))
>>> np.allclose(batched.log_odds(risky, 5000.0), tables.log_odds(risky, 5000.0))
True
>>> tables.log_odds(risky, 5000.0)[0] > 2.0 > -2.0 > tables.log_odds(safe, 5000.0)[0]
True
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np

from detectors.counterparty import COUNTERPARTY_FEATURES
from detectors.profile import FEATURES, INDEX
from schemas.snapshots import restore_fields

#: The tables, in the order of ``cells``: amounts, counterparties and customers, then what
#: carries to any payment stream: the merchant category, by amount band and by hour of day,
#: and the channel by hour of day.
TABLES: Final = ("amount", "amount_to_mean", "counterparty_state", "counterparty_episode", "customer_state",
                 "category", "category_amount", "category_hour", "channel_hour")
#: Merchant categories and channels are hashed into this many buckets (0: none given).
CATEGORY_BUCKETS: Final = 64
CHANNEL_BUCKETS: Final = 8

_BASE: Final = len(FEATURES)  # where the counterparty features start in a model vector
_LOG_AMOUNT, _AMOUNT_TO_MEAN, _CUST_FRAUDS, _LOCAL_HOUR = (
    INDEX[n] for n in ("log_amount", "amount_to_mean", "cust_frauds_14d", "local_hour"))
_CP_RATE, _CP_RECENCY, _CP_EPISODE = (
    _BASE + COUNTERPARTY_FEATURES.index(n)
    for n in ("cp_recent_label_rate", "cp_fraud_recency", "cp_episode_days"))


def bucket(value: str | None, buckets: int) -> int:
    """The bucket of a category or channel name: 0 for none, else 1 .. ``buckets - 1`` (a
    stable hash: the same name gets the same bucket in every process and run).

    >>> bucket(None, 64), bucket("grocery_pos", 64) == bucket("grocery_pos", 64), 0 < bucket("x", 8) < 8
    (0, True, True)
    """
    return 0 if value is None else _bucket(value, buckets)


@lru_cache(maxsize=4096)
def _bucket(value: str, buckets: int) -> int:
    return zlib.crc32(value.encode()) % (buckets - 1) + 1


def cells(x: list[float], category: int = 0, channel: int = 0) -> tuple[int, ...]:
    """A transaction's cell in each of ``TABLES``, from its model vector (profile features
    followed by counterparty features) and the buckets of its category and channel."""
    return tuple(int(c) for c in cells_batch(np.array([x[:_BASE + len(COUNTERPARTY_FEATURES)]]),
                                             np.array([category]), np.array([channel]))[0])


def cells_batch(x: np.ndarray, category: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """``cells`` for every row of ``x`` (profile then counterparty features) and of the
    ``category`` and ``channel`` buckets: (rows, tables)."""
    ratio, cp_rate = x[:, _AMOUNT_TO_MEAN], np.minimum(1.0, x[:, _CP_RATE])
    ratio_log = np.log1p(np.maximum(0.0, ratio))
    amount_band = np.clip(x[:, _LOG_AMOUNT].astype(np.int64), 0, 7)  # e-fold bands: 2.7, 7.4, ... 1,097
    hour_band = np.clip((x[:, _LOCAL_HOUR] / 3.0).astype(np.int64), 0, 7)  # 3-hour bands
    return np.column_stack([
        np.minimum(200, (x[:, _LOG_AMOUNT] * 8.0).astype(np.int64)),
        np.minimum(200, (ratio_log * 8.0).astype(np.int64)),
        # A counterparty's recent labels and how recent its latest known fraud is, together.
        6 * np.round(5.0 * np.clip(cp_rate, 0.0, 1.0)) + np.round(5.0 * np.clip(x[:, _CP_RECENCY], 0.0, 1.0)),
        # ... and its recent labels by the age of its current run of frauds (in 4-day steps).
        16 * np.round(5.0 * np.clip(cp_rate, 0.0, 1.0)) + np.clip((x[:, _CP_EPISODE] / 4.0).astype(np.int64), 0, 15),
        # A customer with confirmed recent fraud, by how unusual the amount is.
        np.where(x[:, _CUST_FRAUDS] > 0, 64, 0) + np.minimum(200, (ratio_log * 6.0).astype(np.int64)),
        category,
        category * 8 + amount_band,
        category * 8 + hour_band,
        channel * 8 + hour_band,
    ]).astype(np.int64).clip(0, None)


#: The number of cells of each table (``cells_batch`` keeps every cell below it), and where
#: each table starts in the flat arrays.
SIZES: Final = (201, 201, 36, 96, 265, CATEGORY_BUCKETS, CATEGORY_BUCKETS * 8, CATEGORY_BUCKETS * 8,
                CHANNEL_BUCKETS * 8)
_OFFSETS: Final = np.cumsum((0, *SIZES[:-1]))


@dataclass(frozen=True, slots=True)
class RateTableParams:
    """Memory and prior of the learned rates."""

    halflife_days: float = 30.0
    prior_rate: float = 0.01
    prior_strength: float = 5.0

    __setstate__ = restore_fields


class RateTables:
    """Decayed (frauds, labels) per cell of every table in ``TABLES``, in one flat array (the
    tables one after the other), so that a batch reads and learns in a few array operations."""

    def __init__(self, params: RateTableParams | None = None) -> None:
        p = self.params = params or RateTableParams()
        self.decay = math.log(2.0) / (p.halflife_days * 86400.0)
        self._prior = p.prior_rate * p.prior_strength
        unseen = self._prior / p.prior_strength
        self._unseen = math.log(unseen / (1.0 - unseen))
        size = sum(SIZES)
        # Decayed frauds, decayed labels and the time they are as of (-inf: no label yet).
        self._frauds = np.zeros(size)
        self._labels = np.zeros(size)
        self._as_of = np.full(size, -np.inf)

    def log_odds(self, cells: tuple[int, ...], t: float) -> list[float]:
        """Smoothed log-odds of fraud in each table's cell as of event time ``t``."""
        values: list[float] = self.log_odds_batch(np.array([cells]), np.array([t]))[0].tolist()
        return values

    def log_odds_batch(self, cells: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``log_odds`` for every row: ``cells`` (rows, tables), ``t`` (rows): (rows, tables)."""
        flat = cells + _OFFSETS
        as_of = self._as_of[flat]
        seen = as_of > -np.inf
        factor = np.exp(-self.decay * np.maximum(0.0, t[:, None] - np.where(seen, as_of, 0.0)))
        rate = (self._frauds[flat] * factor + self._prior) / (self._labels[flat] * factor + self.params.prior_strength)
        return np.where(seen, np.log(rate / (1.0 - rate)), self._unseen)

    def learn_batch(self, cells: np.ndarray, known_at: np.ndarray, fraud: np.ndarray) -> None:
        """Labels of transactions in ``cells`` (rows, tables) that became known at ``known_at``
        (fraud: 1.0 or 0.0), at once: each touched cell is decayed to its newest time, and
        every label is added decayed from its own time to that one, which is what learning
        them one by one in time order gives."""
        flat = (cells + _OFFSETS).ravel()
        times = np.repeat(known_at, len(SIZES))
        newest = np.full(len(self._as_of), -np.inf)
        np.maximum.at(newest, flat, times)
        touched = newest > -np.inf
        old = self._as_of[touched]
        target = np.maximum(old, newest[touched])
        shrink = np.where(old > -np.inf, np.exp(-self.decay * (target - np.where(old > -np.inf, old, 0.0))), 0.0)
        self._frauds[touched] *= shrink
        self._labels[touched] *= shrink
        self._as_of[touched] = target
        weight = np.exp(-self.decay * (self._as_of[flat] - times))
        np.add.at(self._frauds, flat, weight * np.repeat(fraud, len(SIZES)))
        np.add.at(self._labels, flat, weight)

    def learn(self, cells: tuple[int, ...], known_at: float, fraud: bool) -> None:
        """A label for a transaction in these cells became known at ``known_at``."""
        self.learn_batch(np.array([cells]), np.array([known_at]), np.array([float(fraud)]))


class AmountNorms:
    """The usual log-amount of each merchant-category bucket: decayed count, mean and variance
    of the transactions scored, learned at tick ends (``learn_batch``), so that an amount is
    judged against its category's norm (a card's first grocery purchase is not its first
    flight). A bucket with fewer than ``min_count`` transactions has no norm yet (0).

    >>> norms = AmountNorms()
    >>> norms.learn_batch(np.array([3] * 40 + [5] * 40), np.log1p(np.array([20.0] * 40 + [800.0] * 40)), 0.0)
    >>> z = norms.z_batch(np.array([3, 5, 9]), np.log1p(np.array([800.0, 800.0, 800.0])), 0.0)
    >>> [round(float(v), 1) + 0.0 for v in z]   # far above grocery's norm, at travel's, no norm yet
    [7.3, 0.0, 0.0]
    """

    def __init__(self, halflife_days: float = 30.0, min_count: float = 20.0) -> None:
        self.decay = math.log(2.0) / (halflife_days * 86400.0)
        self.min_count = min_count
        self._count = np.zeros(CATEGORY_BUCKETS)
        self._sum = np.zeros(CATEGORY_BUCKETS)
        self._squares = np.zeros(CATEGORY_BUCKETS)
        self._as_of = 0.0

    def z_batch(self, category: np.ndarray, log_amount: np.ndarray, t: float) -> np.ndarray:
        """How many standard deviations each log-amount is above its category's norm."""
        count = self._count[category]
        mean = self._sum[category] / np.maximum(count, 1e-9)
        var = np.maximum(0.0, self._squares[category] / np.maximum(count, 1e-9) - mean * mean)
        z = (log_amount - mean) / np.sqrt(var + 0.25)
        return np.where((count >= self.min_count) & (category > 0), z, 0.0)

    def learn_batch(self, category: np.ndarray, log_amount: np.ndarray, t: float) -> None:
        """The transactions of a tick ending at ``t``: decay to ``t``, then add them."""
        factor = math.exp(-self.decay * max(0.0, t - self._as_of))
        self._as_of = max(self._as_of, t)
        for total in (self._count, self._sum, self._squares):
            total *= factor
        self._count += np.bincount(category, minlength=CATEGORY_BUCKETS)
        self._sum += np.bincount(category, weights=log_amount, minlength=CATEGORY_BUCKETS)
        self._squares += np.bincount(category, weights=log_amount * log_amount, minlength=CATEGORY_BUCKETS)
