"""Fraud rates by value bucket, learned from delayed labels (online target encoding).

``RateTable`` keeps, per bucket of a numeric feature (e.g. the log of the amount), the
exponentially decayed count of labels and of frauds, and reports the Beta-smoothed fraud
rate as a log-odds, a scale on which a linear model can add evidence. It learns nothing
from a transaction until that transaction's label arrives, so a score never sees its own
label; it knows no threshold in advance, the rates find where fraud concentrates.

>>> table = RateTable("log_amount", resolution=4.0, halflife_days=30.0)
>>> for i in range(50):
...     table.learn(6.0, i * 100.0, fraud=True)
...     table.learn(3.0, i * 100.0, fraud=False)
>>> table.log_odds(6.0, 5000.0) > 2.0 > -2.0 > table.log_odds(3.0, 5000.0)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateTableParams:
    """Bucket resolution and memory of the learned rates."""

    resolution: float = 8.0  # buckets per unit of the (log-scaled) feature
    halflife_days: float = 30.0
    prior_rate: float = 0.01
    prior_strength: float = 5.0
    max_bucket: int = 200


class RateTable:
    """Decayed (frauds, labels) per bucket of one feature."""

    def __init__(self, feature: str, resolution: float = 8.0, halflife_days: float = 30.0,
                 prior_rate: float = 0.01, prior_strength: float = 5.0, max_bucket: int = 200) -> None:
        self.feature = feature
        self.resolution = resolution
        self.decay = math.log(2.0) / (halflife_days * 86400.0)
        self.prior_rate, self.prior_strength, self.max_bucket = prior_rate, prior_strength, max_bucket
        self._counts: dict[int, list[float]] = {}  # bucket -> [frauds, labels, as of t]

    @classmethod
    def of(cls, feature: str, params: RateTableParams) -> RateTable:
        return cls(feature, params.resolution, params.halflife_days, params.prior_rate,
                   params.prior_strength, params.max_bucket)

    def bucket(self, value: float) -> int:
        return max(0, min(self.max_bucket, int(value * self.resolution)))

    def _decayed(self, bucket: int, t: float) -> list[float]:
        entry = self._counts.get(bucket)
        if entry is None:
            entry = self._counts[bucket] = [0.0, 0.0, t]
        elif t > entry[2]:
            factor = math.exp(-self.decay * (t - entry[2]))
            entry[0] *= factor
            entry[1] *= factor
            entry[2] = t
        return entry

    def log_odds(self, value: float, t: float) -> float:
        """Smoothed log-odds of fraud for ``value`` as of event time ``t``."""
        entry = self._counts.get(self.bucket(value))
        frauds = labels = 0.0
        if entry is not None:
            factor = math.exp(-self.decay * max(0.0, t - entry[2]))
            frauds, labels = entry[0] * factor, entry[1] * factor
        rate = (frauds + self.prior_rate * self.prior_strength) / (labels + self.prior_strength)
        return math.log(rate / (1.0 - rate))

    def learn(self, value: float, known_at: float, fraud: bool) -> None:
        """A label for a transaction whose feature was ``value`` became known at ``known_at``."""
        entry = self._decayed(self.bucket(value), known_at)
        entry[0] += float(fraud)
        entry[1] += 1.0
