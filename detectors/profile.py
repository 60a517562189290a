"""The event-time behavioural profile of one customer.

``CustomerProfile.observe_transaction(txn)`` returns the transaction's features *as seen
before it* (score before learn) and then folds it into the profile; ``observe_app``,
``observe_profile`` and ``observe_feedback`` update the rest. State is a handful of running
statistics, a few bounded windows and small bounded "seen" sets, so it pickles small and
cheaply (Bytewax snapshots every touched key at every epoch).

>>> from schemas.events import parse_event
>>> p = CustomerProfile()
>>> def txn(ts, amount, cp="m1"):
...     return parse_event(('{"kind":"transaction","event_id":"e","customer_id":"c",'
...         f'"ts":"{ts}","amount":{amount},"counterparty_id":"{cp}"}}').encode())
>>> f = named(p.observe_transaction(txn("2026-01-01T10:00:00Z", 100)))
>>> f["new_counterparty"], f["hist_txns"]
(1.0, 0.0)
>>> f = named(p.observe_transaction(txn("2026-01-01T11:00:00Z", 900)))
>>> f["new_counterparty"], round(f["amount_to_mean"], 1)
(0.0, 8.9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from detectors.windows import SlidingWindows
from schemas.events import AppEvent, Feedback, Profile, Transaction
from schemas.snapshots import restore_fields

HOUR: Final = 3600.0
DAY: Final = 86400.0
#: The spans of every windowed count and sum, in this order: 1 h, 1 d, 7 d, 30 d.
SPANS: Final = (HOUR, DAY, 7 * DAY, 30 * DAY)
#: A ratio feature is capped here: a denominator of a cent's fraction must not make it infinite.
RATIO_CAP: Final = 1e9
SECURITY_ACTIONS: Final = frozenset({"contact_change", "password_reset", "device_bind"})
CASH_DEPOSIT: Final = "cash_deposit"
#: What the fairness figures group customers by, from their profile: (birth_year, gender, city_tier).
Traits = tuple[int | None, str | None, str | None]
NO_TRAITS: Final[Traits] = (None, None, None)

#: The features of a transaction, in a fixed order: ``CustomerProfile.features`` returns a
#: list in this order, and ``INDEX`` gives each one's position in it.
FEATURES: Final = (
    "log_amount", "is_debit", "amount_to_mean", "amount_z", "hist_txns",
    "cnt_1h", "cnt_1d", "cnt_7d", "cnt_30d", "amt_avg_1d", "amt_avg_7d", "amt_avg_30d",
    "velocity_1d", "hours_since_prev", "new_counterparty", "new_device", "foreign", "new_country",
    "night", "small_cnt_1h", "security_change_24h", "failed_logins_1h", "dormant",
    "near_threshold_cash_3d", "log_inflow_24h", "outflow_of_inflow_24h", "cust_frauds_14d",
    "unusual_amount_after_fraud", "local_hour", "hour_share", "category_share", "new_category",
    "spend_1h_to_typical",
)
INDEX: Final = {name: i for i, name in enumerate(FEATURES)}


def named(values: list[float]) -> dict[str, float]:
    """Features by name, for people and tests.

    >>> named([0.0] * len(FEATURES))["amount_z"]
    0.0
    """
    return dict(zip(FEATURES, values, strict=True))


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """How the profile reads behaviour; all times are in event time."""

    home_country: str = "CN"
    utc_offset_hours: float = 8.0  # local time for "night"
    small_amount: float = 5.0  # card-testing probes are tiny
    reporting_threshold: float = 50_000.0  # cash reporting threshold (structuring)
    near_threshold_ratio: float = 0.8  # a deposit in [0.8 T, T) is "just under"
    dormant_days: float = 90.0
    security_window_hours: float = 24.0
    fraud_memory_days: float = 14.0  # how long a confirmed fraud raises the customer's risk
    amount_halflife_txns: float = 50.0  # memory of the typical amount, in transactions
    seen_capacity: int = 128  # counterparties / devices / countries remembered per customer
    # A country is "new" only against a history: a card's first transactions have nothing to
    # be new against (and no typical amount to compare with).
    new_country_min_txns: int = 3
    window_capacity: int = 2048  # transactions kept for the 30 d windows
    # The customer's hours and merchant categories are counted, and the counts halved whenever
    # they reach this many transactions: a habit that changes is learned again.
    habit_memory_txns: int = 400

    __setstate__ = restore_fields


def _remember(seen: dict[str, None], key: str | None, capacity: int) -> bool:
    """Mark ``key`` most recently seen; return whether it is new. LRU-bounded."""
    if key is None:
        return False
    if key in seen:
        del seen[key]
        seen[key] = None
        return False
    seen[key] = None
    if len(seen) > capacity:
        del seen[next(iter(seen))]
    return True


class CustomerProfile:
    """Running behavioural statistics of one customer, in event time."""

    __slots__ = (  # noqa: RUF023 (traits last: see __setstate__)
        "all_txns",
        "cash_near_3d",
        "categories",
        "counterparties",
        "countries",
        "credits",
        "debits",
        "devices",
        "failed_logins",
        "first_t",
        "fraud_label_times",
        "habit_n",
        "hours",
        "last_security_t",
        "last_t",
        "last_txn_t",
        "marketing_opt_out",
        "mean_amount",
        "mean_gap",
        "mean_log",
        "n_app",
        "n_txns",
        "params",
        "risk_level",
        "rm_id",
        "segment",
        "small_1h",
        "var_log",
        "traits",  # last: a snapshot from before it restores without it
    )

    def __init__(self, params: ProfileParams | None = None) -> None:
        self.params = params or ProfileParams()
        self.rm_id: str | None = None
        self.segment: str | None = None
        self.risk_level: int | None = None
        self.marketing_opt_out = False
        self.traits: Traits = NO_TRAITS
        self.n_txns = 0
        self.mean_log = 0.0  # exponentially weighted mean / variance of log1p(amount)
        self.var_log = 0.0
        self.mean_amount = 0.0
        self.first_t: float | None = None
        self.last_t: float | None = None  # latest event of any kind
        self.last_txn_t: float | None = None
        self.mean_gap: float | None = None  # EW mean time between active days' events (churn)
        # Money out and in over the last day (the mule pattern's in-and-out).
        self.debits = SlidingWindows((DAY,), self.params.window_capacity)
        self.credits = SlidingWindows((DAY,), self.params.window_capacity)
        self.all_txns = SlidingWindows(SPANS, self.params.window_capacity)
        self.small_1h = SlidingWindows((HOUR,), 256)
        self.cash_near_3d = SlidingWindows((3 * DAY,), 64)
        self.counterparties: dict[str, None] = {}
        self.devices: dict[str, None] = {}
        self.countries: dict[str, None] = {}
        self.last_security_t: float | None = None
        self.failed_logins = SlidingWindows((HOUR,), 64)
        self.fraud_label_times: list[float] = []
        self.n_app = 0
        self.hours = [0.0] * 24  # transactions by local hour of day (halved now and then)
        self.categories: dict[str, float] = {}  # transactions by merchant category (likewise)
        self.habit_n = 0.0  # the transactions the two counts hold

    # -- updates -------------------------------------------------------------------------

    def _touch(self, t: float) -> None:
        if self.first_t is None:
            self.first_t = t
        if self.last_t is not None and t - self.last_t > 60.0:
            gap = t - self.last_t
            # Slow EW mean of the gaps between bursts of activity: the customer's own rhythm.
            self.mean_gap = gap if self.mean_gap is None else 0.9 * self.mean_gap + 0.1 * gap
        if self.last_t is None or t > self.last_t:
            self.last_t = t

    def observe_transaction(self, txn: Transaction) -> list[float]:
        """Features of ``txn`` against the history before it; then learn from it."""
        features = self.features(txn)
        self._learn_transaction(txn)
        return features

    def features(self, txn: Transaction) -> list[float]:
        """Features of ``txn`` relative to this profile, in ``FEATURES`` order; changes nothing
        but the expiry of old window values."""
        p, t, amount = self.params, txn.t, txn.amount
        debit = txn.direction == "debit"
        all_txns, credits, debits = self.all_txns, self.credits, self.debits
        small_1h, cash_near_3d, failed_logins = self.small_1h, self.cash_near_3d, self.failed_logins
        for window in (all_txns, credits, debits, small_1h, cash_near_3d, failed_logins):
            if t >= window.due:
                window.advance(t)
        log1p = math.log1p
        n_txns = self.n_txns
        log_amount = log1p(amount)
        std = math.sqrt(self.var_log) if n_txns > 1 else 1.0
        counts, sums = all_txns.counts, all_txns.sums
        cnt_1h, cnt_1d, cnt_7d, cnt_30d = counts
        last_txn_t = self.last_txn_t
        # Live, a customer's events on different topics can arrive a little out of order.
        prev_gap_h = max(0.0, t - last_txn_t) / HOUR if last_txn_t is not None else 24.0 * 30
        country = txn.counterparty_country
        foreign = country is not None and country != p.home_country
        inflow_24h = credits.sums[0]
        outflow_24h = debits.sums[0] + (amount if debit else 0.0)
        local_hour = ((t / HOUR) + p.utc_offset_hours) % 24.0
        frauds_recent = 0.0
        if self.fraud_label_times:
            cutoff = t - p.fraud_memory_days * DAY
            frauds_recent = float(sum(1 for ft in self.fraud_label_times if ft > cutoff))
        amount_to_mean = amount / (self.mean_amount + 1.0)
        cp, device, last_security_t = txn.counterparty_id, txn.device_id, self.last_security_t
        # The customer's own hours (this one and its neighbours) and categories: shares of the
        # history, smoothed towards even, so that a customer without history is unremarkable.
        hours, habit_n, hour = self.hours, self.habit_n, int(local_hour)
        hour_share = (hours[hour - 1] + hours[hour] + hours[(hour + 1) % 24] + 0.125) / (habit_n + 1.0)
        category = txn.merchant_category
        seen_category = self.categories.get(category, 0.0) if category is not None else 0.0
        return [
            log_amount,  # log_amount
            1.0 if debit else 0.0,  # is_debit
            amount_to_mean,  # amount_to_mean
            (log_amount - self.mean_log) / (std + 0.25) if n_txns else 0.0,  # amount_z
            log1p(n_txns),  # hist_txns
            log1p(cnt_1h),  # cnt_1h
            log1p(cnt_1d),  # cnt_1d
            log1p(cnt_7d),  # cnt_7d
            log1p(cnt_30d),  # cnt_30d
            log1p(sums[1] / cnt_1d if cnt_1d else 0.0),  # amt_avg_1d
            log1p(sums[2] / cnt_7d if cnt_7d else 0.0),  # amt_avg_7d
            log1p(sums[3] / cnt_30d if cnt_30d else 0.0),  # amt_avg_30d
            (cnt_1d + 1.0) / (cnt_30d / 30.0 + 1.0),  # velocity_1d
            log1p(prev_gap_h),  # hours_since_prev
            1.0 if cp is not None and cp not in self.counterparties else 0.0,  # new_counterparty
            1.0 if device is not None and device not in self.devices else 0.0,  # new_device
            1.0 if foreign else 0.0,  # foreign
            1.0 if foreign and n_txns >= p.new_country_min_txns
            and country not in self.countries else 0.0,  # new_country
            1.0 if local_hour < 6.0 else 0.0,  # night
            float(small_1h.counts[0] + (amount < p.small_amount)),  # small_cnt_1h
            1.0 if last_security_t is not None
            and t - last_security_t <= p.security_window_hours * HOUR else 0.0,  # security_change_24h
            float(failed_logins.counts[0]),  # failed_logins_1h
            1.0 if last_txn_t is not None and t - last_txn_t >= p.dormant_days * DAY else 0.0,  # dormant
            float(cash_near_3d.counts[0] + self._near_threshold(txn)),  # near_threshold_cash_3d
            log1p(inflow_24h),  # log_inflow_24h
            min(RATIO_CAP, outflow_24h / inflow_24h) if debit and inflow_24h > 0 else 0.0,  # outflow_of_inflow_24h
            frauds_recent,  # cust_frauds_14d
            # A card with confirmed recent fraud is still in danger; what gives the next fraud
            # away is an amount unlike the customer's own (a linear model needs the product).
            log1p(amount_to_mean) if frauds_recent else 0.0,  # unusual_amount_after_fraud
            local_hour,  # local_hour
            hour_share,  # hour_share
            (seen_category + 0.125) / (habit_n + 1.0) if category is not None else 1.0,  # category_share
            1.0 if category is not None and seen_category == 0.0
            and habit_n >= p.new_country_min_txns else 0.0,  # new_category
            log1p((sums[0] + amount) / (self.mean_amount + 1.0)),  # spend_1h_to_typical
        ]

    def _near_threshold(self, txn: Transaction) -> bool:
        p = self.params
        return (txn.txn_type == CASH_DEPOSIT
                and p.near_threshold_ratio * p.reporting_threshold <= txn.amount < p.reporting_threshold)

    def _learn_transaction(self, txn: Transaction) -> None:
        p, t, amount = self.params, txn.t, txn.amount
        self._touch(t)
        alpha = max(1.0 / (self.n_txns + 1), 1.0 - 0.5 ** (1.0 / p.amount_halflife_txns))
        x = math.log1p(amount)
        delta = x - self.mean_log
        self.mean_log += alpha * delta
        self.var_log = (1 - alpha) * (self.var_log + alpha * delta * delta)
        self.mean_amount += alpha * (amount - self.mean_amount)
        self.n_txns += 1
        self.last_txn_t = t if self.last_txn_t is None else max(self.last_txn_t, t)
        self.all_txns.add(t, amount)
        (self.debits if txn.direction == "debit" else self.credits).add(t, amount)
        if amount < p.small_amount:
            self.small_1h.add(t, amount)
        if self._near_threshold(txn):
            self.cash_near_3d.add(t, amount)
        self._learn_habits(t, txn.merchant_category)
        _remember(self.counterparties, txn.counterparty_id, p.seen_capacity)
        _remember(self.devices, txn.device_id, p.seen_capacity)
        _remember(self.countries, txn.counterparty_country, p.seen_capacity)

    def _learn_habits(self, t: float, category: str | None) -> None:
        p, hours, categories = self.params, self.hours, self.categories
        if self.habit_n >= p.habit_memory_txns:
            self.habit_n /= 2.0
            for h in range(24):
                hours[h] /= 2.0
            for name in list(categories):
                kept = categories[name] / 2.0
                if kept < 0.25:
                    del categories[name]  # bounded: a category not used for long is forgotten
                else:
                    categories[name] = kept
        self.habit_n += 1.0
        hours[int(((t / HOUR) + p.utc_offset_hours) % 24.0)] += 1.0
        if category is not None:
            categories[category] = categories.get(category, 0.0) + 1.0

    def observe_app(self, event: AppEvent) -> None:
        """Fold an app interaction into the profile."""
        t = event.t
        self._touch(t)
        self.n_app += 1
        if event.action == "login_failed":
            self.failed_logins.add(t, 1.0)
        elif event.action in SECURITY_ACTIONS:
            self.last_security_t = t
        if event.action == "login" or event.action in SECURITY_ACTIONS:
            # Devices used to log in become known; a takeover's new device is new at first use.
            _remember(self.devices, event.device_id, self.params.seen_capacity)
        if event.ip_country is not None and event.ip_country != self.params.home_country:
            _remember(self.countries, event.ip_country, self.params.seen_capacity)

    def observe_profile(self, event: Profile) -> None:
        """Reference data: the latest profile wins, field by field."""
        if event.rm_id is not None:
            self.rm_id = event.rm_id
        if event.segment is not None:
            self.segment = event.segment
        if event.risk_level is not None:
            self.risk_level = event.risk_level
        self.marketing_opt_out = event.marketing_opt_out
        if event.birth_year is not None or event.gender is not None or event.city_tier is not None:
            birth_year, gender, city_tier = self.traits
            self.traits = (event.birth_year if event.birth_year is not None else birth_year,
                           event.gender if event.gender is not None else gender,
                           event.city_tier if event.city_tier is not None else city_tier)

    def observe_feedback(self, event: Feedback) -> None:
        """Confirmed fraud raises this customer's risk for ``fraud_memory_days``. Only the
        fraud labels move the customer's clock (as they always have); the others (churn, an
        RM's answer to a prompt) are the bank's records, not the customer's activity."""
        if event.label in ("fraud", "legit"):
            self._touch(event.t)
        if event.label == "fraud":
            cutoff = event.t - self.params.fraud_memory_days * DAY
            self.fraud_label_times = [ft for ft in self.fraud_label_times if ft > cutoff]
            self.fraud_label_times.append(event.t)

    # -- views ---------------------------------------------------------------------------

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        if len(state) == len(self.__slots__) - 1:  # a snapshot from before the traits
            state = (*state, NO_TRAITS)
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

