"""The simulated customer population: who each customer is and how they usually behave.

``build_customer(rng, index, pools, seed)`` draws one ``Customer`` (static reference data,
personal rhythm and latent product tastes, see ``simulator.preferences``);
``profile_fields(customer)`` is the body of the ``profile`` event that announces it.
Counterparties (merchants, payees, ATM terminals, employers) are integers into global pools
shared by all customers, formatted into ids only when an event is emitted, so a customer
costs a few hundred bytes and a merchant is seen by many customers.

>>> import random
>>> pools = Pools.for_customers(100)
>>> c = build_customer(random.Random(1), 5, pools)
>>> c.customer_id, c.rm_id, c.account_id
('c000005', 'rm001', 'a000005')
>>> sorted(profile_fields(c))
['birth_year', 'city', 'city_tier', 'gender', 'kyc_level', 'marketing_opt_out', 'risk_level', 'rm_id', 'segment']
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from dataclasses import dataclass
from typing import Any, Final

from simulator.preferences import draw_tastes

HOME_COUNTRY: Final = "CN"
CUSTOMERS_PER_RM: Final = 50

SEGMENTS: Final = ("mass", "affluent", "private")
SEGMENT_WEIGHTS: Final = (0.75, 0.20, 0.05)
CITIES: Final = (
    "Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Hangzhou", "Chengdu", "Wuhan",
    "Nanjing", "Xi'an", "Chongqing", "Suzhou", "Tianjin", "Qingdao", "Xiamen",
)
#: The usual tiers of the simulated cities (for the fairness figures of next-best action).
CITY_TIERS: Final = {"Shanghai": "1", "Beijing": "1", "Shenzhen": "1", "Guangzhou": "1", "Hangzhou": "2",
                     "Chengdu": "2", "Wuhan": "2", "Nanjing": "2", "Xi'an": "2", "Chongqing": "2", "Suzhou": "2",
                     "Tianjin": "2", "Qingdao": "2", "Xiamen": "2"}
MERCHANT_CATEGORIES: Final = (
    "grocery", "restaurant", "transport", "fuel", "retail", "electronics", "pharmacy",
    "utilities", "travel", "entertainment", "education", "healthcare", "telecom", "online_retail",
)
# Legit customers travel to these; foreign-spend fraud uses any of them the victim never visited.
FOREIGN_COUNTRIES: Final = ("HK", "JP", "SG", "TH", "KR", "US", "GB", "FR", "AU", "MY", "VN", "AE")
FUND_PRODUCTS: Final = tuple(f"f{n:04d}" for n in range(1, 61))
WEALTH_PRODUCTS: Final = tuple(f"w{n:03d}" for n in range(1, 31))
STOCK_PRODUCTS: Final = tuple(f"s{600000 + 17 * n}" for n in range(200))
#: The category (as in the action catalogue) of each product customers view and buy in the app.
PRODUCT_CATEGORY: Final[dict[str, str]] = {
    **{product: "fund" for product in FUND_PRODUCTS},
    **{product: "wealth" for product in WEALTH_PRODUCTS},
    **{product: "equity" for product in STOCK_PRODUCTS},
}

# Transaction types a customer's regular rhythm draws from (scripted flows add salary, loans,
# and the typologies); the weights below index into this tuple.
TXN_TYPES: Final = (
    "card_payment", "transfer_out", "transfer_in", "cash_withdrawal", "cash_deposit",
    "securities_buy", "securities_sell", "fund_purchase", "fund_redemption",
)
_BASE_MIX: Final = (0.58, 0.12, 0.05, 0.08, 0.03, 0.0, 0.0, 0.0, 0.0)
_BROKERAGE_MIX: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.045, 0.0, 0.0)
_FUND_MIX: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.025, 0.02)

# (typical amount median CNY, its log-sd, starting balance in typical amounts, brokerage share)
_SEGMENT_MONEY: Final = {
    "mass": (150.0, 0.5, 40.0, 0.15),
    "affluent": (450.0, 0.5, 150.0, 0.45),
    "private": (1500.0, 0.6, 500.0, 0.7),
}


@dataclass(frozen=True, slots=True)
class Pools:
    """Sizes of the global counterparty pools, scaled with the population."""

    merchants: int
    payees: int
    atms: int
    employers: int
    rms: int  # relationship managers, about CUSTOMERS_PER_RM customers each

    @staticmethod
    def for_customers(customers: int) -> Pools:
        """Pools big enough that usual counterparties overlap realistically between customers."""
        return Pools(
            rms=max(1, math.ceil(customers / CUSTOMERS_PER_RM)),
            merchants=max(500, min(80_000, customers * 2)),
            payees=max(2_000, min(800_000, customers * 3)),
            atms=max(100, min(50_000, customers // 5)),
            employers=max(50, min(90_000, customers // 20)),
        )


@dataclass(frozen=True, slots=True)
class Customer:
    """One customer's reference data and personal rhythm; never changes during a run."""

    index: int
    customer_id: str
    account_id: str
    rm_id: str
    segment: str
    risk_level: int
    marketing_opt_out: bool
    birth_year: int
    city: str
    kyc_level: str
    txn_rate: float  # regular transactions per day
    app_rate: float  # app sessions per day; 0 for customers who never use the app
    app_channel: str  # "app" (mobile) or "web"
    typical_cents: int  # a typical card payment, the unit of all the customer's amounts
    initial_balance_cents: int
    # Compact arrays, not tuples of ints: they are most of a customer's memory otherwise.
    merchants: array[int]
    payees: array[int]
    atms: tuple[int, ...]
    devices: tuple[str, ...]
    travel_countries: tuple[str, ...]
    mix: tuple[float, ...]  # cumulative weights over TXN_TYPES (shared between customers)
    salary_cents: int  # 0 when the customer has no monthly salary here
    salary_day: int
    employer: int
    loan_cents: int  # 0 when the customer has no loan here
    loan_day: int
    # Latent: the log-odds shift of converting per action category, in the order of
    # simulator.preferences.TASTE_CATEGORIES; never sent, it decides answers to prompts.
    tastes: tuple[float, ...] = ()


def merchant_id(n: int) -> str:
    """Wire id of merchant ``n`` of the global pool."""
    return f"m{n:05d}"


def merchant_category(n: int) -> str:
    """A merchant's category never changes; derived from its number so nothing is stored."""
    return MERCHANT_CATEGORIES[(n * 7919 + 13) % len(MERCHANT_CATEGORIES)]


def payee_id(n: int) -> str:
    """Wire id of payee ``n`` of the global pool."""
    return f"p{n:06d}"


def atm_id(n: int) -> str:
    """Wire id of ATM terminal ``n``."""
    return f"t{n:05d}"


def employer_id(n: int) -> str:
    """Wire id of employer ``n`` (the counterparty of salary credits)."""
    return f"co{n:05d}"


def _popular(rng: random.Random, size: int) -> int:
    # Squaring a uniform skews draws towards low numbers: a few popular counterparties that
    # many customers share, and a long tail.
    return int(size * rng.random() ** 2)


def _weighted_index(rng: random.Random, weights: tuple[float, ...]) -> int:
    r = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        r -= w
        if r < 0:
            return i
    return len(weights) - 1


def _cumulative_mix(brokerage: bool, funds: bool) -> tuple[float, ...]:
    weights = [
        b + (k if brokerage else 0.0) + (f if funds else 0.0)
        for b, k, f in zip(_BASE_MIX, _BROKERAGE_MIX, _FUND_MIX, strict=True)
    ]
    total = sum(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return tuple(out)


# Four possible mixes; computing them once makes every customer share the same tuples.
MIXES: Final = {(b, f): _cumulative_mix(b, f) for b in (False, True) for f in (False, True)}


def build_customer(rng: random.Random, index: int, pools: Pools, seed: int = 0) -> Customer:
    """Draw customer ``index``: reference data, money habits, counterparties and devices from
    ``rng``; their tastes from a generator of their own seeded by ``seed`` and ``index``, so
    that the tastes take no draw from ``rng``."""
    segment = SEGMENTS[_weighted_index(rng, SEGMENT_WEIGHTS)]
    typical_median, typical_sd, balance_units, brokerage_share = _SEGMENT_MONEY[segment]
    typical = max(20.0, rng.lognormvariate(math.log(typical_median), typical_sd))
    txn_rate = min(8.0, max(0.3, rng.lognormvariate(math.log(1.5), 0.6)))
    risk_level = 1 + _weighted_index(rng, (0.15, 0.3, 0.3, 0.17, 0.08))
    brokerage = rng.random() < brokerage_share * (0.5 + 0.25 * risk_level)
    funds = rng.random() < (0.3 if segment == "mass" else 0.7)
    uses_app = rng.random() < (0.75 if segment == "mass" else 0.85)
    salaried = rng.random() < 0.75
    has_loan = rng.random() < 0.2
    monthly_spend = typical * txn_rate * 30.4
    return Customer(
        index=index,
        customer_id=f"c{index:06d}",
        account_id=f"a{index:06d}",
        rm_id=f"rm{index % pools.rms:03d}",
        segment=segment,
        risk_level=risk_level,
        marketing_opt_out=rng.random() < 0.1,
        birth_year=int(rng.triangular(1945, 2006, 1985 if segment == "mass" else 1972)),
        city=CITIES[_popular(rng, len(CITIES))],
        kyc_level="enhanced" if segment == "private" else rng.choice(("basic", "standard", "standard")),
        txn_rate=txn_rate,
        app_rate=rng.lognormvariate(math.log(0.33), 0.6) if uses_app else 0.0,
        app_channel="app" if rng.random() < 0.85 else "web",
        typical_cents=int(typical * 100),
        initial_balance_cents=int(typical * balance_units * rng.lognormvariate(0.0, 0.8) * 100),
        merchants=array("i", [_popular(rng, pools.merchants) for _ in range(rng.randint(8, 25))]),
        payees=array("i", [_popular(rng, pools.payees) for _ in range(rng.randint(2, 8))]),
        atms=tuple(rng.randrange(pools.atms) for _ in range(rng.randint(1, 2))),
        devices=tuple(f"d{index:06d}{k}" for k in range(rng.randint(1, 2))),
        travel_countries=tuple(rng.sample(FOREIGN_COUNTRIES, rng.randint(1, 3)))
        if rng.random() < (0.05 if segment == "mass" else 0.3) else (),
        mix=MIXES[(brokerage, funds)],
        salary_cents=int(monthly_spend * rng.uniform(1.6, 2.4) * 100) if salaried else 0,
        salary_day=rng.randint(1, 28),
        employer=_popular(rng, pools.employers),
        loan_cents=int(monthly_spend * rng.uniform(0.2, 0.6) * 100) if has_loan else 0,
        loan_day=rng.randint(1, 28),
        tastes=draw_tastes(seed, index, segment),
    )


def profile_fields(customer: Customer) -> dict[str, Any]:
    """The body of the customer's ``profile`` event (CONTRACT.md, section ``profile``)."""
    return {
        "rm_id": customer.rm_id,
        "segment": customer.segment,
        "risk_level": customer.risk_level,
        "marketing_opt_out": customer.marketing_opt_out,
        "birth_year": customer.birth_year,
        "city": customer.city,
        "kyc_level": customer.kyc_level,
        "city_tier": CITY_TIERS.get(customer.city, "3"),
        "gender": gender_of(customer.customer_id),
    }


def gender_of(customer_id: str) -> str:
    """A customer's simulated gender: half and half, from a hash of the id (so that adding it
    draws nothing from the population's random stream and changes no other figure).

    >>> gender_of("c000001"), gender_of("c000002")
    ('male', 'female')
    """
    return "female" if hashlib.blake2b(customer_id.encode(), digest_size=2).digest()[0] < 128 else "male"
