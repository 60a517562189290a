"""Counterparty (merchant, terminal, payee) risk learned from delayed feedback labels.

A fraud label usually arrives days after the transaction it labels. ``CounterpartyRisk``
counts, per counterparty, the labels *known so far* (by the time the label arrived, its
knowledge time) over trailing windows, and the traffic it sees (decayed counts). ``features_batch(cps, t)``
(rows in ``COUNTERPARTY_FEATURES`` order) reads what was known before: the windowed counts as
of the last ``expire(now)`` (the fraud detector's latest model tick), the decayed rates and
the recency of the latest known fraud as of each row's own time. The features of a
transaction never see its own label.

The state lives in numpy columns, one slot per counterparty (``_slots`` maps an id to its
slot; past ``capacity`` the least recently seen are forgotten), so that a batch of transactions is featurised in a few
array operations. Windowed counts are kept exact by a heap of the times at which each
counted value leaves its window.

>>> risk = CounterpartyRisk()
>>> risk.observe_transaction("t1", 0.0)
>>> risk.observe_label("t1", 86400.0, fraud=True)
>>> f = dict(zip(COUNTERPARTY_FEATURES, risk.features("t1", 2 * 86400.0)))
>>> f["cp_frauds_7d"], round(f["cp_fraud_rate_28d"], 3)
(1.0, 0.34)
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from schemas.snapshots import restore_fields

DAY: Final = 86400.0
COUNTERPARTY_FEATURES: Final = (
    "cp_frauds_7d", "cp_frauds_28d", "cp_fraud_rate_28d", "cp_fraud_logodds", "cp_labels_28d",
    "cp_recent_label_rate", "cp_fraud_recency", "cp_episode_days", "cp_txns_1d", "cp_txns_7d", "cp_new",
)
#: The windows counted per counterparty: (column, span). Frauds over 7 and 28 days, labels
#: over 28 days (by when they became known).
_FRAUDS_7D, _FRAUDS_28D, _LABELS_28D = range(3)
_SPANS: Final = (7 * DAY, 28 * DAY, 28 * DAY)
#: Traffic is counted with exponential decay over these time constants (a steady flow of n a
#: day counts n and 7 n, as a 1- and a 7-day window would), so that a batch of transactions
#: is counted in a few array operations and nothing has to leave a window.
_TRAFFIC_TAUS: Final = np.array([DAY, 7 * DAY])
# Columns of _state.
_D_FRAUDS, _D_LABELS, _AS_OF, _RECENT, _LAST_FRAUD, _EPISODE, _TRAFFIC_1D, _TRAFFIC_7D, _TRAFFIC_AS_OF = range(9)


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

    __setstate__ = restore_fields


class CounterpartyRisk:
    """Per-counterparty label and traffic counts in numpy columns; LRU-bounded."""

    def __init__(self, params: CounterpartyParams | None = None) -> None:
        self.params = p = params or CounterpartyParams()
        self._decay = math.log(2.0) / (p.halflife_days * DAY)
        self._prior_odds = math.log(p.prior_rate / (1.0 - p.prior_rate))
        empty = dict.fromkeys(COUNTERPARTY_FEATURES, 0.0) | {
            "cp_new": 1.0, "cp_fraud_rate_28d": p.prior_rate, "cp_fraud_logodds": self._prior_odds,
            "cp_recent_label_rate": p.prior_rate}
        self._empty = np.array(list(empty.values()))
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = [None] * 1024  # the counterparty in each slot
        self._free: list[int] = []
        self._size = 0
        size = 1024
        self._counts = np.zeros((size, len(_SPANS)))
        # decayed frauds, decayed labels, as of (time), recent label rate, latest fraud's
        # transaction time (-inf: none), start of the current fraud run (-inf: none), decayed
        # traffic over a day and a week, as of (time)
        self._state = np.zeros((size, 9))
        self._generation = np.zeros(size, dtype=np.int64)  # a reused slot's old heap entries are void
        self._seen = np.full(size, -np.inf)  # when each was last seen (transactions and labels)
        self._expiries: list[tuple[float, int, int, int]] = []  # (time, slot, window, generation)

    def __len__(self) -> int:
        return len(self._slots)

    # -- slots -----------------------------------------------------------------------------

    def _mark_seen(self, slots: list[int], times: list[float]) -> None:
        """Sightings of ``slots`` at ``times``: each slot's last-seen time moves up to its latest."""
        np.maximum.at(self._seen, np.array(slots, dtype=np.intp), np.array(times))

    def _new_slot(self, cp: str) -> int:
        if len(self._slots) >= self.params.capacity:
            self._forget()
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._size
            self._size += 1
            if slot >= len(self._counts):
                grow = len(self._counts)
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts[:grow])])
                self._state = np.concatenate([self._state, np.zeros_like(self._state[:grow])])
                self._generation = np.concatenate([self._generation, np.zeros(grow, dtype=np.int64)])
                self._seen = np.concatenate([self._seen, np.full(grow, -np.inf)])
                self._ids.extend([None] * grow)
        self._counts[slot] = 0.0
        self._state[slot] = (0.0, 0.0, 0.0, self.params.prior_rate, -np.inf, -np.inf, 0.0, 0.0, 0.0)
        self._generation[slot] += 1
        self._seen[slot] = -np.inf
        self._ids[slot] = cp
        return slot

    def _forget(self) -> None:
        """Forget the least recently seen sixteenth of the counterparties (at least one): one
        selection for many new ones, where a list in use order would cost every sighting."""
        used = np.flatnonzero(np.array([cp is not None for cp in self._ids[:self._size]]))
        k = max(1, len(used) // 16)
        oldest = used[np.argpartition(self._seen[used], k - 1)[:k]]
        for slot in sorted(oldest.tolist(), key=lambda s: (self._seen[s], s)):
            del self._slots[self._ids[slot]]
            self._ids[slot] = None
            self._free.append(slot)

    # -- reading ---------------------------------------------------------------------------

    def features_batch(self, cps: list[str | None], t: np.ndarray) -> np.ndarray:
        """What is known about each counterparty at each row's time ``t``: rows in
        ``COUNTERPARTY_FEATURES`` order (windowed counts as of the last ``expire``)."""
        n = len(cps)
        out = np.tile(self._empty, (n, 1))
        slots = self._slots
        known = [i for i, cp in enumerate(cps) if cp is not None and cp in slots]
        if not known:
            return out
        rows = np.array(known, dtype=np.intp)
        idx = np.array([slots[cps[i]] for i in known], dtype=np.intp)  # type: ignore[index]
        p = self.params
        counts, state, at = self._counts[idx], self._state[idx], t[rows]
        frauds_7d, frauds_28d, labels_28d = counts[:, _FRAUDS_7D], counts[:, _FRAUDS_28D], counts[:, _LABELS_28D]
        decayed_frauds, decayed_labels, as_of = state[:, _D_FRAUDS], state[:, _D_LABELS], state[:, _AS_OF]
        prior = p.prior_rate * p.prior_strength
        factor = np.exp(-self._decay * np.maximum(0.0, at - as_of))
        rate = (decayed_frauds * factor + prior) / (decayed_labels * factor + p.prior_strength)
        logodds = np.where(decayed_labels > 0, np.log(rate / (1.0 - rate)), self._prior_odds)
        last_fraud, episode = state[:, _LAST_FRAUD], state[:, _EPISODE]  # -inf: none
        traffic = state[:, _TRAFFIC_1D:_TRAFFIC_7D + 1] * np.exp(
            -np.maximum(0.0, at - state[:, _TRAFFIC_AS_OF])[:, None] / _TRAFFIC_TAUS)
        recency = np.exp(-np.maximum(0.0, at - last_fraud) / (p.recency_days * DAY))  # 0 when none
        running = episode > -np.inf
        episode_days = np.where(running, at - np.where(running, episode, 0.0), 0.0) / DAY
        out[rows] = np.column_stack([
            frauds_7d, frauds_28d, (frauds_28d + prior) / (labels_28d + p.prior_strength), logodds,
            np.log1p(labels_28d), state[:, _RECENT], recency, episode_days, np.log1p(traffic[:, 0]),
            np.log1p(traffic[:, 1]), np.zeros(len(known))])
        return out

    def features(self, cp: str | None, t: float) -> list[float]:
        """``features_batch`` for one counterparty (after expiring what left the windows by ``t``)."""
        self.expire(t)
        values: list[float] = self.features_batch([cp], np.array([t]))[0].tolist()
        return values

    # -- learning --------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Take out of the windowed counts what left its window by event time ``now``."""
        expiries, counts, generation = self._expiries, self._counts, self._generation
        while expiries and expiries[0][0] <= now:
            _, slot, window, gen = heapq.heappop(expiries)
            if generation[slot] == gen:
                counts[slot, window] -= 1.0

    def observe_transaction(self, cp: str | None, t: float) -> None:
        """Count a transaction with ``cp`` (after it was scored)."""
        self.observe_transactions([(cp, t)])

    def _run_slots(self, cps: list[str], start: int) -> list[int]:
        """The slots of ``cps[start:]`` (made where new), up to the first new one that would
        forget another while slots are already taken: whatever a run learns, it learns for
        counterparties that are all still there, as one by one would. A run is never empty."""
        slots_of, capacity = self._slots, self.params.capacity
        slots: list[int] = []
        for cp in cps[start:] if start else cps:
            slot = slots_of.get(cp)
            if slot is None:
                if slots and len(slots_of) >= capacity:
                    break
                slot = slots_of[cp] = self._new_slot(cp)
            slots.append(slot)
        return slots

    def observe_transactions(self, seen: list[tuple[str | None, float]]) -> None:
        """Count transactions (counterparty, time) at once: each counterparty's decayed
        traffic is brought to its newest time, and every transaction added decayed from its
        own, as one by one in time order."""
        known = [(cp, t) for cp, t in seen if cp is not None]
        cps, start = [cp for cp, _ in known], 0
        while start < len(known):
            slots = self._run_slots(cps, start)
            times_of = [t for _, t in known[start:start + len(slots)]]
            start += len(slots)
            self._mark_seen(slots, times_of)
            touched, where = np.unique(np.array(slots, dtype=np.intp), return_inverse=True)
            times = np.array(times_of)
            state = self._state
            newest = np.full(len(touched), -np.inf)
            np.maximum.at(newest, where, times)
            target = np.maximum(state[touched, _TRAFFIC_AS_OF], newest)
            age = (target[where] - times)[:, None] / _TRAFFIC_TAUS
            added = np.zeros((len(touched), 2))
            np.add.at(added, where, np.exp(-age))
            shrink = np.exp(-(target - state[touched, _TRAFFIC_AS_OF])[:, None] / _TRAFFIC_TAUS)
            state[touched, _TRAFFIC_1D:_TRAFFIC_7D + 1] = state[touched, _TRAFFIC_1D:_TRAFFIC_7D + 1] * shrink + added
            state[touched, _TRAFFIC_AS_OF] = target

    def observe_label(self, cp: str | None, known_at: float, fraud: bool, txn_t: float | None = None) -> None:
        """A label for a transaction with ``cp`` (at ``txn_t``) became known at ``known_at``."""
        self.observe_labels([(cp, known_at, fraud, txn_t)])

    def observe_labels(self, labels: list[tuple[str | None, float, bool, float | None]]) -> None:
        """Labels ``(cp, known at, fraud, transaction time)`` in order, as one by one: the
        counts and each counterparty's row read and written once a run (``_run_slots``), its
        recurrence (decayed rates, the recent label rate, the fraud run) stepped in Python
        floats in between."""
        known = [(cp, known_at, fraud, txn_t) for cp, known_at, fraud, txn_t in labels if cp is not None]
        cps, start = [cp for cp, _, _, _ in known], 0
        while start < len(known):
            slots = self._run_slots(cps, start)
            self._observe_run(known[start:start + len(slots)], slots)
            start += len(slots)

    def _observe_run(self, labels: list[tuple[str, float, bool, float | None]], slots: list[int]) -> None:
        """``observe_labels`` for one run of labels and their counterparties' slots."""
        self._mark_seen(slots, [known_at for _, known_at, _, _ in labels])
        generation = self._generation[slots].tolist()
        counted_slots: list[int] = []
        counted_windows: list[int] = []
        push, expiries = heapq.heappush, self._expiries
        for (_, known_at, fraud, _), slot, gen in zip(labels, slots, generation, strict=True):
            for window in (_LABELS_28D, _FRAUDS_7D, _FRAUDS_28D) if fraud else (_LABELS_28D,):
                counted_slots.append(slot)
                counted_windows.append(window)
                push(expiries, (known_at + _SPANS[window], slot, window, gen))
        np.add.at(self._counts, (np.array(counted_slots, dtype=np.intp), np.array(counted_windows)), 1.0)
        state, touched = self._state, sorted(set(slots))
        rows = dict(zip(touched, state[touched, :_TRAFFIC_1D].tolist(), strict=True))
        decay, w, quiet = self._decay, self.params.recent_weight, self.params.episode_end_rate
        for (_, known_at, fraud, txn_t), slot in zip(labels, slots, strict=True):
            decayed_frauds, decayed_labels, as_of, recent, last_fraud, episode = rows[slot]
            factor = math.exp(-decay * max(0.0, known_at - as_of))
            was_quiet = recent < quiet
            recent = (1.0 - w) * recent + w * fraud
            if not fraud and recent < quiet:
                episode = -math.inf
            if fraud:
                txn_time = known_at if txn_t is None else txn_t
                if episode == -math.inf or was_quiet:
                    episode = txn_time
                last_fraud = max(last_fraud, txn_time)
            rows[slot] = [decayed_frauds * factor + fraud, decayed_labels * factor + 1.0, max(known_at, as_of),
                          recent, last_fraud, episode]
        state[touched, :_TRAFFIC_1D] = [rows[slot] for slot in touched]

    def __getstate__(self) -> dict[str, Any]:
        size = self._size
        keep = max(size, 1)
        return {**self.__dict__, "_counts": self._counts[:keep].copy(), "_state": self._state[:keep].copy(),
                "_generation": self._generation[:keep].copy(), "_seen": self._seen[:keep].copy(),
                "_ids": self._ids[:keep]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
