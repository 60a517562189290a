"""Counterparty (merchant, terminal, payee) risk learned from delayed feedback labels.

A fraud label usually arrives days after the transaction it labels. ``CounterpartyRisk``
counts, per counterparty, the labels *known so far* (by the time the label arrived, its
knowledge time) over trailing windows, and the traffic it sees. ``features(cp, t)`` (a list
in ``COUNTERPARTY_FEATURES`` order) only uses what was known before ``t``, so the features of
a transaction never leak its own label.

>>> risk = CounterpartyRisk()
>>> risk.observe_transaction("t1", 0.0)
>>> risk.observe_label("t1", 86400.0, fraud=True)
>>> f = dict(zip(COUNTERPARTY_FEATURES, risk.features("t1", 2 * 86400.0)))
>>> f["cp_frauds_7d"], round(f["cp_fraud_rate_28d"], 3)
(1.0, 0.34)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from detectors.windows import SlidingWindows

DAY: Final = 86400.0
LABEL_SPANS: Final = (7 * DAY, 28 * DAY)
TRAFFIC_SPANS: Final = (DAY, 7 * DAY)

COUNTERPARTY_FEATURES: Final = (
    "cp_frauds_7d", "cp_frauds_28d", "cp_fraud_rate_28d", "cp_fraud_logodds", "cp_labels_28d",
    "cp_recent_label_rate", "cp_fraud_recency", "cp_episode_days", "cp_txns_1d", "cp_txns_7d", "cp_new",
)


@dataclass(frozen=True, slots=True)
class CounterpartyParams:
    """Smoothing of the fraud rate and how many counterparties to remember."""

    prior_rate: float = 0.01  # fraud rate assumed before any label
    prior_strength: float = 2.0  # the prior counts as this many labels
    halflife_days: float = 14.0  # memory of the decayed fraud rate
    recent_weight: float = 0.3  # weight of the newest label in the recent label rate
    recency_days: float = 7.0  # cp_fraud_recency = exp(-days since the latest known fraud / this)
    episode_end_rate: float = 0.1  # a fraud run ends when the recent label rate falls below this
    capacity: int = 200_000  # least recently seen counterparties are forgotten past this


class _Counterparty:
    __slots__ = ("decayed", "episode_t", "frauds", "labels", "last_fraud_txn_t", "recent", "traffic")

    def __init__(self, prior_rate: float) -> None:
        # Label windows are made with the first label: most counterparties never get one.
        self.frauds: SlidingWindows | None = None
        self.labels: SlidingWindows | None = None
        self.traffic = SlidingWindows(TRAFFIC_SPANS, 16384)
        self.decayed = [0.0, 0.0, 0.0]  # frauds, labels, as of event time
        # The state of the counterparty as its latest labels tell it: a compromised terminal
        # shows in a run of fraud labels, and a cleaned one in the legit labels that follow.
        self.recent = prior_rate
        self.last_fraud_txn_t: float | None = None  # when the latest known fraud happened
        # When the current run of frauds began (its first fraud transaction); attacks on a
        # counterparty tend to last a typical time, which the models can learn from its age.
        self.episode_t: float | None = None

    def __getstate__(self) -> tuple[object, ...]:
        return (self.frauds, self.labels, self.traffic, self.decayed, self.recent, self.last_fraud_txn_t,
                self.episode_t)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.frauds, self.labels, self.traffic, self.decayed, self.recent,
         self.last_fraud_txn_t, self.episode_t) = state


class CounterpartyRisk:
    """Per-counterparty label and traffic windows; LRU-bounded."""

    def __init__(self, params: CounterpartyParams | None = None) -> None:
        self.params = params or CounterpartyParams()
        self._by_id: dict[str, _Counterparty] = {}
        self._decay = math.log(2.0) / (self.params.halflife_days * DAY)
        p = self.params
        self._prior_odds = math.log(p.prior_rate / (1.0 - p.prior_rate))
        empty = dict.fromkeys(COUNTERPARTY_FEATURES, 0.0) | {
            "cp_new": 1.0, "cp_fraud_rate_28d": p.prior_rate, "cp_fraud_logodds": self._prior_odds,
            "cp_recent_label_rate": p.prior_rate}
        self._empty = tuple(empty.values())
        unlabelled = p.prior_rate * p.prior_strength / p.prior_strength
        self._unlabelled_odds = math.log(unlabelled / (1.0 - unlabelled))

    def __len__(self) -> int:
        return len(self._by_id)

    def _get(self, cp: str) -> _Counterparty:
        entry = self._by_id.pop(cp, None)
        if entry is None:
            entry = _Counterparty(self.params.prior_rate)
            if len(self._by_id) >= self.params.capacity:
                del self._by_id[next(iter(self._by_id))]
        self._by_id[cp] = entry  # most recently used last
        return entry

    def features(self, cp: str | None, t: float) -> list[float]:
        """What is known about ``cp`` at event time ``t``, in ``COUNTERPARTY_FEATURES`` order;
        changes nothing but the expiry of old window values."""
        entry = self._by_id.get(cp) if cp is not None else None
        if entry is None:
            return list(self._empty)
        traffic = entry.traffic
        if t >= traffic.due:
            traffic.advance(t)
        p = self.params
        frauds_7d = frauds_28d = labels_28d = 0
        fraud_windows, label_windows = entry.frauds, entry.labels
        if fraud_windows is not None and label_windows is not None:
            if t >= fraud_windows.due:
                fraud_windows.advance(t)
            if t >= label_windows.due:
                label_windows.advance(t)
            frauds_7d, frauds_28d = fraud_windows.counts
            labels_28d = label_windows.counts[0]
        frauds, labels, as_of = entry.decayed
        prior = p.prior_rate * p.prior_strength
        if labels:
            factor = math.exp(-self._decay * max(0.0, t - as_of))
            rate = (frauds * factor + prior) / (labels * factor + p.prior_strength)
            logodds = math.log(rate / (1.0 - rate))
        else:  # known, never labelled
            logodds = self._unlabelled_odds
        last_fraud_t, episode_t = entry.last_fraud_txn_t, entry.episode_t
        return [
            float(frauds_7d),  # cp_frauds_7d
            float(frauds_28d),  # cp_frauds_28d
            (frauds_28d + prior) / (labels_28d + p.prior_strength),  # cp_fraud_rate_28d
            logodds,  # cp_fraud_logodds
            math.log1p(labels_28d),  # cp_labels_28d
            entry.recent,  # cp_recent_label_rate
            # 1 for a fraud that just happened, fading with time; 0 when none is known.
            math.exp(-max(0.0, t - last_fraud_t) / (p.recency_days * DAY))
            if last_fraud_t is not None else 0.0,  # cp_fraud_recency
            (t - episode_t) / DAY if episode_t is not None else 0.0,  # cp_episode_days
            math.log1p(traffic.counts[0]),  # cp_txns_1d
            math.log1p(traffic.counts[1]),  # cp_txns_7d
            0.0,  # cp_new
        ]

    def observe_transaction(self, cp: str | None, t: float) -> None:
        """Count a transaction with ``cp`` (after it was scored)."""
        if cp is not None:
            self._get(cp).traffic.add(t, 1.0)

    def observe_label(self, cp: str | None, known_at: float, fraud: bool, txn_t: float | None = None) -> None:
        """A label for a transaction with ``cp`` (at ``txn_t``) became known at ``known_at``."""
        if cp is None:
            return
        entry = self._get(cp)
        if entry.frauds is None or entry.labels is None:
            entry.frauds = SlidingWindows(LABEL_SPANS, 4096)
            entry.labels = SlidingWindows(LABEL_SPANS[1:], 16384)
        entry.labels.add(known_at, 1.0)
        if fraud:
            entry.frauds.add(known_at, 1.0)
        decayed = entry.decayed
        factor = math.exp(-self._decay * max(0.0, known_at - decayed[2]))
        entry.decayed = [decayed[0] * factor + fraud, decayed[1] * factor + 1.0, max(known_at, decayed[2])]
        w, quiet = self.params.recent_weight, self.params.episode_end_rate
        was_quiet = entry.recent < quiet
        entry.recent = (1.0 - w) * entry.recent + w * fraud
        if not fraud and entry.recent < quiet:
            entry.episode_t = None
        if fraud:
            txn_time = known_at if txn_t is None else txn_t
            if entry.episode_t is None or was_quiet:
                entry.episode_t = txn_time
            if entry.last_fraud_txn_t is None or txn_time > entry.last_fraud_txn_t:
                entry.last_fraud_txn_t = txn_time
