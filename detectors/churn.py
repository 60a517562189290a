"""Churn risk from recency against the customer's own rhythm of activity.

A customer who usually acts every ``g`` seconds and has now been silent for ``s`` is
scored by how unlikely that silence is if they were still active: with activity as a
Poisson process of rate 1/g, P(silence >= s) = exp(-s / g), and the churn score is
1 - that probability, tempered by how much history there is (a customer seen twice says
little about their rhythm). A high score is indicative of a customer drifting away.

>>> p = ChurnParams()
>>> quiet = churn_score(silence=30 * 86400.0, mean_gap=2 * 86400.0, n_events=200,
...                     tenure=365 * 86400.0, params=p)
>>> active = churn_score(silence=86400.0, mean_gap=2 * 86400.0, n_events=200,
...                      tenure=365 * 86400.0, params=p)
>>> quiet > 0.9 > 0.5 > active
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChurnParams:
    """Priors for customers with little history."""

    prior_gap_days: float = 14.0  # assumed rhythm before a customer has one
    prior_events: float = 5.0  # the prior counts as this many observed gaps


def churn_score(silence: float, mean_gap: float | None, n_events: int, tenure: float,
                params: ChurnParams) -> float:
    """Churn risk in [0, 1] after ``silence`` seconds without activity."""
    prior_gap = params.prior_gap_days * 86400.0
    observed_gap = mean_gap if mean_gap is not None else prior_gap
    # Shrink the observed rhythm towards the prior by the amount of evidence.
    weight = n_events / (n_events + params.prior_events)
    gap = max(60.0, weight * observed_gap + (1.0 - weight) * prior_gap)
    # A long-tenured customer's rhythm is known better than its count of events says.
    gap = max(gap, min(tenure, prior_gap) / max(n_events, 1))
    return 1.0 - math.exp(-max(0.0, silence) / gap)
