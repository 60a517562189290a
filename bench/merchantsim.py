"""A profile-based card generator with merchant categories, hours and demographics.

A second card-payment stream for the detection benchmarks, in the spirit of Sparkov (Brandon
Harris's profile-based credit-card transaction generator) and unlike ``bench.cardsim``
(the Fraud Detection Handbook's simulator, where spending has no category, no hour pattern
and frauds are mostly compromised terminals). Deterministic for a seed (one numpy
``Generator``); amounts in CNY, clock times local (``utc_offset_hours``, Beijing by
default) and written as UTC.

- Customers (cards): an age band, a gender, a city tier and a home region; an income
  drawn from them gives the profile's ``segment`` (mass, affluent, private) and scales
  the amounts. Each demographic combination has its own category mix (14 categories,
  ``_net`` ones online), hour-of-day curve (young adults late, seniors in the morning),
  weekend factor and activity rate; each customer perturbs the mix (Dirichlet) and draws
  its own rate and spending level.
- Amounts: lognormal per category; merchants: a pool per category and region (one
  national pool for online categories and travel); a customer keeps a few regular
  merchants per category and now and then tries another.
- Frauds, about ``fraud_share`` of the transactions, in short bursts: a compromised card
  gets 3-15 fraudulent transactions within 1-3 days, 80 % of them at night (22:00-04:00
  local), interleaved with the holder's own spending, at merchants the card never uses.
  Two scenarios: card not present (online shopping and misc, some online grocery) and
  counterfeit card (grocery, gas, shops, misc at the counter). A burst often starts with
  one or two small probes (gas or online misc, around 15 CNY); the rest have their own,
  larger amounts. Few cards are compromised twice.

Output: one ``profile`` event per customer at the start, the ``transaction`` events
(``card_payment``, ``channel`` ``online`` or ``pos``, ``merchant_category``,
``counterparty_id`` the merchant) and, ``feedback_delay_s`` after each, its ``fraud`` or
``legit`` label; in event-time order. ``--truth-out`` writes the CSV that
``bench.card_benchmark.load_truth`` reads, with the burst of each fraud.

    python -m bench.merchantsim --customers 1000 --days 183 --seed 0 \\
        --out events.jsonl --truth-out truth.csv
"""

from __future__ import annotations

import argparse
import gzip
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DAY_S = 86_400
HOUR_S = 3_600

CATEGORIES = ("grocery_pos", "grocery_net", "gas_transport", "shopping_pos", "shopping_net", "food_dining",
              "entertainment", "health_fitness", "home", "kids_pets", "misc_pos", "misc_net", "personal_care",
              "travel")
CAT = {name: i for i, name in enumerate(CATEGORIES)}
ONLINE = np.array([name.endswith("_net") for name in CATEGORIES])
NATIONAL = ONLINE | (np.arange(len(CATEGORIES)) == CAT["travel"])  # merchants not tied to a region
AGE_BANDS = ("18-25", "26-35", "36-50", "51-65", "65+")
AGE_WEIGHTS = (0.14, 0.22, 0.28, 0.22, 0.14)
AGE_RANGES = ((18, 25), (26, 35), (36, 50), (51, 65), (66, 85))
GENDERS = ("F", "M")
TIERS = ("tier1", "tier2", "rural")
TIER_WEIGHTS = (0.35, 0.40, 0.25)
REGIONS = ("north", "east", "south", "central", "west")
REGION_WEIGHTS = (0.22, 0.28, 0.22, 0.16, 0.12)
SCENARIO_NAMES = {0: "legit", 1: "card not present", 2: "counterfeit card"}
NIGHT_HOURS = (22, 23, 0, 1, 2, 3)

#: Share of each category in an average customer's spending.
BASE_MIX = (0.15, 0.04, 0.12, 0.08, 0.07, 0.10, 0.07, 0.06, 0.08, 0.07, 0.06, 0.04, 0.07, 0.03)
#: Multipliers of the mix, per age band, gender and city tier: {category: factor}.
AGE_MIX: tuple[dict[str, float], ...] = (
    {"shopping_net": 1.9, "misc_net": 1.6, "grocery_net": 1.4, "entertainment": 1.7, "food_dining": 1.4,
     "home": 0.4, "kids_pets": 0.4, "health_fitness": 0.8, "travel": 0.8},
    {"shopping_net": 1.5, "grocery_net": 1.5, "kids_pets": 1.4, "food_dining": 1.2, "entertainment": 1.2},
    {"home": 1.3, "kids_pets": 1.5, "gas_transport": 1.2},
    {"home": 1.3, "health_fitness": 1.3, "travel": 1.3, "shopping_net": 0.7, "entertainment": 0.8},
    {"health_fitness": 2.0, "grocery_pos": 1.4, "home": 1.2, "travel": 1.1, "shopping_net": 0.4,
     "misc_net": 0.5, "grocery_net": 0.5, "entertainment": 0.6, "kids_pets": 0.6, "gas_transport": 0.7},
)
GENDER_MIX: tuple[dict[str, float], ...] = (
    {"personal_care": 1.5, "shopping_pos": 1.25, "kids_pets": 1.2, "gas_transport": 0.8},
    {"gas_transport": 1.25, "entertainment": 1.15, "personal_care": 0.65, "shopping_pos": 0.85},
)
TIER_MIX: tuple[dict[str, float], ...] = (
    {"grocery_net": 1.5, "food_dining": 1.25, "shopping_net": 1.15, "gas_transport": 0.75, "travel": 1.2},
    {},
    {"gas_transport": 1.45, "grocery_pos": 1.2, "grocery_net": 0.45, "shopping_net": 0.8, "food_dining": 0.8,
     "travel": 0.7},
)
#: Median amount (CNY) and lognormal sigma of legitimate spending, per category.
AMOUNTS = ((120.0, 0.6), (95.0, 0.6), (190.0, 0.5), (260.0, 0.9), (210.0, 1.0), (85.0, 0.7), (120.0, 0.8),
           (160.0, 0.8), (180.0, 0.9), (130.0, 0.8), (60.0, 1.0), (75.0, 1.0), (70.0, 0.8), (900.0, 0.9))
#: Weekend multipliers of a category's share.
WEEKEND_MIX = {"entertainment": 1.6, "food_dining": 1.3, "travel": 1.4, "shopping_pos": 1.3,
               "gas_transport": 0.8, "health_fitness": 0.8, "kids_pets": 1.2}
#: Per age band: activity (transactions a day, median), weekend factor, amount factor.
AGE_RATE = (1.05, 1.15, 1.0, 0.85, 0.6)
AGE_WEEKEND = (1.25, 1.15, 1.1, 1.0, 0.9)
AGE_AMOUNT = (0.75, 1.0, 1.15, 1.05, 0.85)
TIER_RATE = (1.1, 1.0, 0.85)
TIER_INCOME = (1.35, 1.0, 0.75)

#: Per scenario: fraud categories and their weights; probe categories.
FRAUD_MIX = {
    1: {"shopping_net": 0.5, "misc_net": 0.35, "grocery_net": 0.15},
    2: {"grocery_pos": 0.35, "gas_transport": 0.2, "shopping_pos": 0.3, "misc_pos": 0.15},
}
PROBE_CATEGORY = {1: "misc_net", 2: "gas_transport"}
#: Median amount (CNY) and sigma of fraudulent transactions, per category; probes apart.
FRAUD_AMOUNTS = {"shopping_net": (1500.0, 0.6), "misc_net": (800.0, 0.6), "grocery_net": (550.0, 0.5),
                 "grocery_pos": (600.0, 0.45), "gas_transport": (380.0, 0.45), "shopping_pos": (1400.0, 0.55),
                 "misc_pos": (650.0, 0.6)}
PROBE_AMOUNT = (15.0, 0.5)


def _bump(hours: FloatArray, centre: float, width: float) -> FloatArray:
    """A bump on the 24-hour circle."""
    d = np.minimum(np.abs(hours - centre), 24 - np.abs(hours - centre))
    return np.exp(-0.5 * (d / width) ** 2)


def hour_curves() -> FloatArray:
    """Probability of each local hour, shape ``(age band, category, 24)``: the age band's
    rhythm times the category's."""
    h = np.arange(24, dtype=np.float64) + 0.5
    age = np.stack([
        0.15 + _bump(h, 13, 2.5) + 1.3 * _bump(h, 20.5, 2.5),  # young adults: afternoon to late
        0.08 + 0.8 * _bump(h, 8, 1.5) + _bump(h, 12.5, 2) + 1.1 * _bump(h, 19.5, 2),
        0.06 + _bump(h, 9, 2) + _bump(h, 12.5, 2) + 0.9 * _bump(h, 18.5, 2),
        0.04 + 1.2 * _bump(h, 9.5, 2) + 0.8 * _bump(h, 14, 2) + 0.5 * _bump(h, 18.5, 1.5),
        0.02 + 1.5 * _bump(h, 9, 1.8) + 0.6 * _bump(h, 14, 2),  # seniors: mornings
    ])
    flat = np.ones(24)
    cat = {c: flat for c in CATEGORIES}
    cat["food_dining"] = 0.2 + _bump(h, 12.5, 1) + 1.2 * _bump(h, 19, 1.3)
    cat["entertainment"] = 0.2 + 0.5 * _bump(h, 15, 2) + 1.5 * _bump(h, 20.5, 2)
    cat["gas_transport"] = 0.3 + _bump(h, 8, 1.5) + _bump(h, 18, 1.5)
    cat["grocery_pos"] = 0.3 + _bump(h, 10.5, 2) + _bump(h, 18, 1.5)
    for net in ("grocery_net", "shopping_net", "misc_net"):
        cat[net] = 0.6 + _bump(h, 21, 2.5)  # online in the evening too
    cat["health_fitness"] = 0.3 + _bump(h, 8, 1.5) + 0.8 * _bump(h, 18.5, 1.5)
    out = age[:, None, :] * np.stack([cat[c] for c in CATEGORIES])[None, :, :]
    return out / out.sum(axis=2, keepdims=True)


@dataclass(frozen=True)
class MerchantSimConfig:
    """Size, seed and time frame of a generated dataset."""

    customers: int = 1000
    days: int = 183
    seed: int = 0
    start_date: str = "2024-01-01"  # local
    utc_offset_hours: float = 8.0
    fraud_share: float = 0.02
    feedback_delay_s: int = 7 * DAY_S
    merchants_per_pool: int = 40  # per category and region; online pools are three times larger

    @property
    def start_epoch(self) -> int:
        """Unix time of local midnight on ``start_date``."""
        start = datetime.fromisoformat(self.start_date).replace(tzinfo=UTC)
        return int(start.timestamp() - self.utc_offset_hours * HOUR_S)

    @property
    def start_weekday(self) -> int:
        """Monday 0 .. Sunday 6 of the first day."""
        return datetime.fromisoformat(self.start_date).weekday()


@dataclass(frozen=True)
class Customers:
    """Demographics and habits, one entry per customer (index = customer number)."""

    age: IntArray
    gender: IntArray
    tier: IntArray
    region: IntArray
    birth_year: IntArray
    income: FloatArray  # relative to the median customer
    mix: FloatArray  # (customers, categories), rows sum to 1
    rate: FloatArray  # transactions a day on weekdays
    weekend: FloatArray  # weekend rate factor
    level: FloatArray  # amount factor

    def __len__(self) -> int:
        return int(self.age.size)

    def segment(self, i: int) -> str:
        """``private`` for the richest 2 %-ish, ``affluent`` for the next 18 %, else ``mass``."""
        income = float(self.income[i])
        return "private" if income > 3.0 else "affluent" if income > 1.6 else "mass"

    def city(self, i: int) -> str:
        return f"{REGIONS[int(self.region[i])]}-{TIERS[int(self.tier[i])]}"


@dataclass(frozen=True)
class Transactions:
    """All transactions in time order; the position is the transaction number."""

    seconds: IntArray  # since local midnight of the first day
    customer: IntArray
    category: IntArray
    merchant: IntArray
    amount: FloatArray
    fraud: BoolArray
    scenario: npt.NDArray[np.int8]
    burst: IntArray  # 0 for legitimate transactions, else 1, 2, ...

    def __len__(self) -> int:
        return int(self.seconds.size)

    @property
    def day(self) -> IntArray:
        return self.seconds // DAY_S

    @property
    def local_hour(self) -> IntArray:
        return (self.seconds % DAY_S) // HOUR_S


def _factors(table: dict[str, float]) -> FloatArray:
    return np.array([table.get(c, 1.0) for c in CATEGORIES])


def draw_customers(config: MerchantSimConfig, rng: np.random.Generator) -> Customers:
    """Demographics first, then the habits they shape, each perturbed per customer."""
    n = config.customers
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_WEIGHTS)
    gender = rng.integers(0, 2, size=n)
    tier = rng.choice(len(TIERS), size=n, p=TIER_WEIGHTS)
    region = rng.choice(len(REGIONS), size=n, p=REGION_WEIGHTS)
    lo, hi = np.array(AGE_RANGES).T
    birth_year = datetime.fromisoformat(config.start_date).year - rng.integers(lo[age], hi[age] + 1)
    prime = np.array([0.8, 1.0, 1.2, 1.15, 0.8])[age]
    income = np.array(TIER_INCOME)[tier] * prime * rng.lognormal(0.0, 0.45, size=n)
    base = np.array(BASE_MIX)
    mean_mix = np.stack([base * _factors(AGE_MIX[a]) * _factors(GENDER_MIX[g]) * _factors(TIER_MIX[t])
                         for a, g, t in zip(age.tolist(), gender.tolist(), tier.tolist(), strict=True)])
    mean_mix /= mean_mix.sum(axis=1, keepdims=True)
    mix = np.stack([rng.dirichlet(40.0 * row) for row in mean_mix])
    rate = np.array(AGE_RATE)[age] * np.array(TIER_RATE)[tier] * rng.lognormal(0.0, 0.45, size=n)
    weekend = np.array(AGE_WEEKEND)[age] * rng.lognormal(0.0, 0.1, size=n)
    level = np.array(AGE_AMOUNT)[age] * np.sqrt(income) * rng.lognormal(0.0, 0.2, size=n)
    return Customers(age=age, gender=gender, tier=tier, region=region, birth_year=birth_year, income=income,
                     mix=mix, rate=rate, weekend=weekend, level=level)


@dataclass(frozen=True)
class MerchantPools:
    """Merchant numbers per (category, region); national categories use region 0's pool."""

    first: IntArray  # (categories, regions): number of the pool's first merchant
    size: IntArray  # (categories,)
    popularity: list[FloatArray]  # per category, Zipf-like weights of the pool's merchants

    def pool(self, category: int, region: int) -> tuple[int, int]:
        """``[lo, hi)`` merchant numbers of the pool."""
        lo = int(self.first[category, 0 if NATIONAL[category] else region])
        return lo, lo + int(self.size[category])


def merchant_pools(config: MerchantSimConfig) -> MerchantPools:
    size = np.where(NATIONAL, 3 * config.merchants_per_pool, config.merchants_per_pool).astype(np.int64)
    first = np.zeros((len(CATEGORIES), len(REGIONS)), dtype=np.int64)
    nxt = 0
    for c in range(len(CATEGORIES)):
        for r in range(1 if NATIONAL[c] else len(REGIONS)):
            first[c, r] = nxt
            nxt += int(size[c])
        if NATIONAL[c]:
            first[c, 1:] = first[c, 0]
    popularity = [1.0 / np.arange(1, int(s) + 1) ** 0.8 for s in size]
    return MerchantPools(first, size, [p / p.sum() for p in popularity])


def _weekend_days(config: MerchantSimConfig) -> BoolArray:
    return (config.start_weekday + np.arange(config.days)) % 7 >= 5


def legit_transactions(config: MerchantSimConfig, people: Customers, pools: MerchantPools,
                       rng: np.random.Generator) -> tuple[IntArray, IntArray, IntArray, IntArray, FloatArray]:
    """Seconds, customer, category, merchant and amount of the holders' own spending."""
    weekend = _weekend_days(config)
    daily = people.rate[:, None] * np.where(weekend[None, :], people.weekend[:, None], 1.0)
    counts = rng.poisson(daily)
    customer = np.repeat(np.arange(len(people)), counts.sum(axis=1))
    day = np.concatenate([np.repeat(np.arange(config.days), row) for row in counts])
    is_weekend = weekend[day]
    weekend_mix = _factors(WEEKEND_MIX)
    category = np.empty(customer.size, dtype=np.int64)
    for we in (False, True):
        mix = people.mix * (weekend_mix if we else 1.0)
        cdf = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)
        rows = np.flatnonzero(is_weekend == we)
        u = rng.random(rows.size)
        category[rows] = np.minimum((u[:, None] > cdf[customer[rows]]).sum(axis=1), len(CATEGORIES) - 1)
    hour_cdf = np.cumsum(hour_curves(), axis=2)
    u = rng.random(customer.size)
    hour = np.minimum((u[:, None] > hour_cdf[people.age[customer], category]).sum(axis=1), 23)
    seconds = day * DAY_S + hour * HOUR_S + rng.integers(0, HOUR_S, size=customer.size)
    median, sigma = np.array(AMOUNTS).T
    amount = np.round(np.exp(np.log(median[category] * people.level[customer])
                             + sigma[category] * rng.standard_normal(customer.size)), 2)
    amount = np.maximum(amount, 1.0)
    merchant = regular_merchants(customer, category, people, pools, rng)
    return seconds.astype(np.int64), customer, category, merchant, amount


def regular_merchants(customer: IntArray, category: IntArray, people: Customers, pools: MerchantPools,
                      rng: np.random.Generator, p_regular: float = 0.85) -> IntArray:
    """A merchant per transaction: one of the customer's 2-6 regulars of the category (most
    of the time), else any in the pool, by popularity."""
    merchant = np.empty(customer.size, dtype=np.int64)
    n_cat = len(CATEGORIES)
    key = customer * n_cat + category
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        rows = order[lo:hi]
        c, cat = int(customer[rows[0]]), int(category[rows[0]])
        first, last = pools.pool(cat, int(people.region[c]))
        popularity = pools.popularity[cat]
        regulars = rng.choice(last - first, size=int(rng.integers(2, 7)), replace=False, p=popularity)
        own = rng.random(rows.size) < p_regular
        picks = np.where(own, regulars[rng.integers(0, regulars.size, size=rows.size)],
                         rng.choice(last - first, size=rows.size, p=popularity))
        merchant[rows] = first + picks
    return merchant


@dataclass(frozen=True)
class Bursts:
    """The fraudulent transactions, burst by burst."""

    seconds: IntArray
    customer: IntArray
    category: IntArray
    merchant: IntArray
    amount: FloatArray
    scenario: npt.NDArray[np.int8]
    burst: IntArray


def _burst_times(rng: np.random.Generator, start: int, duration: int, n: int,
                 night_share: float) -> IntArray:
    """``n`` times in ``[start, start + duration)``, each at night with ``night_share``
    (rejection sampling: a window of a day or more always holds six night hours)."""
    times = np.empty(n, dtype=np.int64)
    want_night = rng.random(n) < night_share
    for i in range(n):
        while True:
            t = start + int(rng.integers(0, duration))
            if (((t % DAY_S) // HOUR_S) in NIGHT_HOURS) == want_night[i]:
                times[i] = t
                break
    return np.sort(times)


def fraud_bursts(config: MerchantSimConfig, people: Customers, pools: MerchantPools, n_legit: int,
                 used: list[set[int]], rng: np.random.Generator, night_share: float = 0.8,
                 repeat_share: float = 0.05) -> Bursts:
    """Bursts enough for ``fraud_share`` of all transactions; a card rarely twice."""
    mean_len = 9.0  # of 3..15
    n_bursts = max(1, round(config.fraud_share / (1 - config.fraud_share) * n_legit / mean_len))
    n_repeat = int(rng.binomial(n_bursts, repeat_share))
    fresh = rng.choice(len(people), size=min(n_bursts - n_repeat, len(people)), replace=False)
    cards = np.concatenate([fresh, rng.choice(fresh, size=n_bursts - fresh.size)])
    last_start = max(1, config.days - 3) * DAY_S
    ints: dict[str, list[int]] = {k: [] for k in ("seconds", "customer", "category", "merchant", "scenario",
                                                  "burst")}
    amounts: list[float] = []
    for number, card in enumerate(cards.tolist(), start=1):
        scenario = 1 if rng.random() < 0.6 else 2
        n = int(rng.integers(3, 16))
        duration = int(rng.integers(DAY_S, 3 * DAY_S + 1))
        start = int(rng.integers(DAY_S, last_start))
        times = _burst_times(rng, start, duration, n, night_share)
        names = list(FRAUD_MIX[scenario])
        weights = np.array(list(FRAUD_MIX[scenario].values()))
        n_probes = int(rng.choice(3, p=(0.4, 0.35, 0.25)))
        for j, t in enumerate(times.tolist()):
            probe = j < n_probes
            cat = PROBE_CATEGORY[scenario] if probe else names[int(rng.choice(len(names), p=weights))]
            median, sigma = PROBE_AMOUNT if probe else FRAUD_AMOUNTS[cat]
            region = int(rng.integers(0, len(REGIONS)))  # the fraudster's, not the card's
            first, last = pools.pool(CAT[cat], region)
            while True:
                merchant = first + int(rng.choice(last - first, p=pools.popularity[CAT[cat]]))
                if merchant not in used[card]:
                    break
            for key, value in (("seconds", t), ("customer", card), ("category", CAT[cat]),
                               ("merchant", merchant), ("scenario", scenario), ("burst", number)):
                ints[key].append(value)
            amounts.append(max(1.0, round(float(rng.lognormal(np.log(median), sigma)), 2)))
    arrays = {key: np.array(values, dtype=np.int64) for key, values in ints.items()}
    return Bursts(seconds=arrays["seconds"], customer=arrays["customer"], category=arrays["category"],
                  merchant=arrays["merchant"], amount=np.array(amounts, dtype=np.float64),
                  scenario=arrays["scenario"].astype(np.int8), burst=arrays["burst"])


def simulate(config: MerchantSimConfig) -> tuple[Customers, Transactions]:
    """The customers and their labelled transactions, in time order."""
    rng = np.random.default_rng(config.seed)
    people = draw_customers(config, rng)
    pools = merchant_pools(config)
    seconds, customer, category, merchant, amount = legit_transactions(config, people, pools, rng)
    used: list[set[int]] = [set() for _ in range(len(people))]
    for c, m in zip(customer.tolist(), merchant.tolist(), strict=True):
        used[c].add(m)
    bursts = fraud_bursts(config, people, pools, seconds.size, used, rng)
    n_legit, n_fraud = seconds.size, bursts.seconds.size
    all_seconds = np.concatenate([seconds, bursts.seconds])
    order = np.lexsort((np.concatenate([customer, bursts.customer]), all_seconds))
    tx = Transactions(
        seconds=all_seconds[order], customer=np.concatenate([customer, bursts.customer])[order],
        category=np.concatenate([category, bursts.category])[order],
        merchant=np.concatenate([merchant, bursts.merchant])[order],
        amount=np.concatenate([amount, bursts.amount])[order],
        fraud=np.r_[np.zeros(n_legit, dtype=bool), np.ones(n_fraud, dtype=bool)][order],
        scenario=np.r_[np.zeros(n_legit, dtype=np.int8), bursts.scenario][order],
        burst=np.r_[np.zeros(n_legit, dtype=np.int64), bursts.burst][order])
    return people, tx


# -- output ---------------------------------------------------------------------------------


def _timestamp(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _profile_event(people: Customers, i: int, ts: str) -> dict[str, object]:
    return {"kind": "profile", "event_id": f"pf{i}", "ts": ts, "customer_id": f"cust{i}",
            "segment": people.segment(i), "birth_year": int(people.birth_year[i]), "city": people.city(i)}


def _transaction_event(tx: Transactions, i: int, ts: str) -> dict[str, object]:
    cat = int(tx.category[i])
    return {"kind": "transaction", "event_id": f"tx{i}", "ts": ts, "customer_id": f"cust{int(tx.customer[i])}",
            "amount": float(tx.amount[i]), "currency": "CNY", "txn_type": "card_payment",
            "channel": "online" if ONLINE[cat] else "pos", "merchant_category": CATEGORIES[cat],
            "counterparty_id": f"merch{int(tx.merchant[i])}", "counterparty_country": "CN"}


def _feedback_event(tx: Transactions, i: int, ts: str) -> dict[str, object]:
    return {"kind": "feedback", "event_id": f"fb{i}", "ts": ts, "customer_id": f"cust{int(tx.customer[i])}",
            "label": "fraud" if tx.fraud[i] else "legit", "ref_event_id": f"tx{i}"}


def event_order(people: Customers, tx: Transactions, delay_s: int) -> list[tuple[int, int, int]]:
    """``(local seconds, kind rank, index)`` of every event, sorted: profiles at second 0
    first, then a transaction before a feedback at the same second."""
    keys = [(0, 0, i) for i in range(len(people))]
    keys += [(s, 1, i) for i, s in enumerate(tx.seconds.tolist())]
    keys += [(s + delay_s, 2, i) for i, s in enumerate(tx.seconds.tolist())]
    keys.sort()
    return keys


def _open_out(path: Path, compress: bool) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        return gzip.open(path, "wb", compresslevel=3)  # type: ignore[return-value]
    return path.open("wb")


def write_events(people: Customers, tx: Transactions, config: MerchantSimConfig, path: Path) -> int:
    """Write the JSONL event stream; the number of events."""
    build = (lambda i, ts: _profile_event(people, i, ts), lambda i, ts: _transaction_event(tx, i, ts),
             lambda i, ts: _feedback_event(tx, i, ts))
    keys = event_order(people, tx, config.feedback_delay_s)
    tmp = path.with_name(path.name + ".part")
    with _open_out(tmp, path.suffix == ".gz") as out:
        for lo in range(0, len(keys), 50_000):
            out.write(b"".join(orjson.dumps(build[rank](i, _timestamp(config.start_epoch + s))) + b"\n"
                               for s, rank, i in keys[lo:lo + 50_000]))
    tmp.replace(path)
    return len(keys)


def write_truth(tx: Transactions, config: MerchantSimConfig, path: Path) -> None:
    """``event_id,customer_id,ts,day,is_fraud,scenario,burst,category,local_hour`` per
    transaction, by number (``day``: local day since the start)."""
    tmp = path.with_name(path.name + ".part")
    with _open_out(tmp, path.suffix == ".gz") as out:
        out.write(b"event_id,customer_id,ts,day,is_fraud,scenario,burst,category,local_hour\n")
        rows = (f"tx{i},cust{c},{_timestamp(config.start_epoch + s)},{s // DAY_S},{int(f)},{sc},{b},"
                f"{CATEGORIES[k]},{(s % DAY_S) // HOUR_S}\n"
                for i, (s, c, f, sc, b, k) in enumerate(zip(
                    tx.seconds.tolist(), tx.customer.tolist(), tx.fraud.tolist(), tx.scenario.tolist(),
                    tx.burst.tolist(), tx.category.tolist(), strict=True)))
        out.write("".join(rows).encode())
    tmp.replace(path)


def summary(tx: Transactions) -> str:
    """One line: transactions, frauds, bursts, night share and frauds per scenario."""
    n_fraud = int(tx.fraud.sum())
    share = n_fraud / len(tx) if len(tx) else 0.0
    night = np.isin(tx.local_hour, NIGHT_HOURS)
    fraud_night = float(night[tx.fraud].mean()) if n_fraud else 0.0
    legit_night = float(night[~tx.fraud].mean()) if len(tx) > n_fraud else 0.0
    per = ", ".join(f"{SCENARIO_NAMES[s]}: {int((tx.scenario == s).sum())}" for s in (1, 2))
    return (f"{len(tx)} transactions, {n_fraud} frauds ({share:.2%}) in {np.unique(tx.burst[tx.fraud]).size} "
            f"bursts ({per}); at night: frauds {fraud_night:.0%}, legitimate {legit_night:.1%}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.merchantsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--feedback-delay-days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, required=True, help="events JSONL (.gz to compress)")
    parser.add_argument("--truth-out", type=Path, help="labels CSV (.gz to compress)")
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset's options (shared with the benchmark)."""
    defaults = MerchantSimConfig()
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start-date", default=defaults.start_date, help="first day, YYYY-MM-DD (local)")
    parser.add_argument("--utc-offset-hours", type=float, default=defaults.utc_offset_hours,
                        help="the customers' local time (the engine's [fraud] utc_offset_hours)")
    parser.add_argument("--fraud-share", type=float, default=defaults.fraud_share)


def config_from_args(args: argparse.Namespace) -> MerchantSimConfig:
    delay_days = getattr(args, "feedback_delay_days", 7.0)
    return MerchantSimConfig(customers=args.customers, days=args.days, seed=args.seed, start_date=args.start_date,
                             utc_offset_hours=args.utc_offset_hours, fraud_share=args.fraud_share,
                             feedback_delay_s=round(delay_days * DAY_S))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    people, tx = simulate(config)
    n_events = write_events(people, tx, config, args.out)
    if args.truth_out is not None:
        write_truth(tx, config, args.truth_out)
    print(summary(tx))
    print(f"{n_events} events to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
