"""Injected fraud and AML patterns ("typologies"), each a short script for one victim customer.

``plan_case(rng, customer, case, end_ms, new_session)`` returns the case's steps as
``(ts_ms, ScriptedTxn | ScriptedApp)`` pairs in time order. The generator emits them among the
customer's ordinary behaviour; a ``ScriptedTxn`` with a ``typology`` is labelled fraudulent in
the ground truth and gets a ``fraud`` feedback event, while the case's app events (failed logins,
password resets, ...) are context, never labelled.

Fraudsters reuse infrastructure, as they do in reality: card-testing merchants, mule payee
accounts, fraud devices and the senders of mule money come from small pools that ordinary
customers never touch, so a detector can learn them from feedback but not from an id prefix.

>>> import random
>>> from simulator.population import Pools, build_customer
>>> rng = random.Random(3)
>>> c = build_customer(rng, 1, Pools.for_customers(10))
>>> steps = plan_case(rng, c, Case("structuring", "case-1", 0), 10 * DAY_MS, lambda: "s1")
>>> deposits = [s for _, s in steps if isinstance(s, ScriptedTxn) and s.fields["txn_type"] == "cash_deposit"]
>>> 3 <= len(deposits) <= 6 and all(45_000_00 <= d.cents < 50_000_00 for d in deposits)
True
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from simulator.population import (
    FOREIGN_COUNTRIES,
    HOME_COUNTRY,
    Customer,
    merchant_id,
)

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
LOCAL_UTC_OFFSET_MS: Final = 8 * HOUR_MS  # customers live in China (UTC+8)

CARD_TESTING: Final = "card_testing"
ACCOUNT_TAKEOVER: Final = "account_takeover"
STRUCTURING: Final = "structuring"
MULE_IN_OUT: Final = "mule_in_out"
FOREIGN_SPEND: Final = "foreign_spend"
DORMANT_REACTIVATION: Final = "dormant_reactivation"
TYPOLOGIES: Final = (CARD_TESTING, ACCOUNT_TAKEOVER, STRUCTURING, MULE_IN_OUT, FOREIGN_SPEND,
                     DORMANT_REACTIVATION)
#: A dormant account must stay silent this long before it is reactivated (detectors use 90 days).
DORMANT_SILENCE_DAYS: Final = 92.0
#: ``dormant_reactivation`` is only injected when the simulated period is at least this long.
DORMANT_MIN_DAYS: Final = 120.0

CASH_REPORTING_THRESHOLD_CENTS: Final = 50_000_00
# Merchant and payee numbers above the ordinary pools (see population.Pools).
_RISKY_MERCHANT_BASE: Final = 90_000
_RISKY_MERCHANTS: Final = 40
_FOREIGN_MERCHANT_BASE: Final = 80_000
_FOREIGN_MERCHANTS_PER_COUNTRY: Final = 100
_MULE_PAYEE_BASE: Final = 900_000
_MULE_PAYEES: Final = 400
_MULE_SOURCE_BASE: Final = 950_000
_MULE_SOURCES: Final = 200
_FRAUD_DEVICES: Final = 60
_FRAUD_IP_COUNTRIES: Final = ("VN", "KH", "MM", "PH", "NG", "RU", "US", "ID")


@dataclass(frozen=True, slots=True)
class Case:
    """One injected case: which typology, its id, and when it starts (epoch ms)."""

    typology: str
    case_id: str
    start_ms: int


@dataclass(frozen=True, slots=True)
class ScriptedTxn:
    """A transaction a script emits; its amount is settled against the balance at emission.

    ``fields`` are the wire fields other than ``amount`` and ``balance_after`` (``direction``
    is always present). A debit never overdraws: it is capped at the balance. With ``drain``
    > 0 the amount is that share of the balance at emission instead of ``cents``.
    """

    fields: dict[str, Any]
    cents: int
    drain: float = 0.0
    typology: str | None = None
    case_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScriptedApp:
    """An app event a script emits; ``fields`` are its wire fields other than the common ones."""

    fields: dict[str, Any] = field(default_factory=dict)


Step = tuple[int, ScriptedTxn | ScriptedApp]
SessionIds = Callable[[], str]


def foreign_merchant(country: str, k: int) -> str:
    """Wire id of the ``k``-th merchant (0..99) located in ``country``."""
    index = FOREIGN_COUNTRIES.index(country)
    return merchant_id(_FOREIGN_MERCHANT_BASE + index * _FOREIGN_MERCHANTS_PER_COUNTRY + k)


def foreign_merchant_count() -> int:
    """How many merchants each foreign country has."""
    return _FOREIGN_MERCHANTS_PER_COUNTRY


def local_hour(ts_ms: int) -> int:
    """Hour of day (0..23) in the customers' local time."""
    return (ts_ms + LOCAL_UTC_OFFSET_MS) // HOUR_MS % 24


def available_typologies(days: float) -> tuple[str, ...]:
    """The typologies a period of ``days`` can hold (dormancy needs a long period)."""
    return TYPOLOGIES if days >= DORMANT_MIN_DAYS else TYPOLOGIES[:-1]


def plan_case(rng: random.Random, customer: Customer, case: Case, end_ms: int,
              new_session: SessionIds) -> list[Step]:
    """The steps of ``case`` for ``customer``, in time order (steps past ``end_ms`` are dropped)."""
    planner = _PLANNERS[case.typology]
    steps = planner(rng, customer, case, end_ms, new_session)
    steps.sort(key=lambda step: step[0])
    return [step for step in steps if step[0] < end_ms]


def _fraud_txn(case: Case, customer: Customer, cents: int, drain: float = 0.0,
               **fields: Any) -> ScriptedTxn:
    wire = {"account_id": customer.account_id, **fields}
    return ScriptedTxn(wire, cents, drain, case.typology, case.case_id)


def _mule_payees(rng: random.Random, k: int) -> list[str]:
    return [f"p{_MULE_PAYEE_BASE + n:06d}" for n in rng.sample(range(_MULE_PAYEES), k)]


def _card_testing(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                  new_session: SessionIds) -> list[Step]:
    """Tiny payments at an unseen merchant within ~30 min, then 1-3 large ones."""
    merchant = _RISKY_MERCHANT_BASE + rng.randrange(_RISKY_MERCHANTS)
    card: dict[str, Any] = {"txn_type": "card_payment", "direction": "debit", "channel": "web",
            "counterparty_country": HOME_COUNTRY, "merchant_category": "digital_goods"}
    steps: list[Step] = []
    t = case.start_ms
    offsets = sorted(rng.randrange(30 * MINUTE_MS) for _ in range(rng.randint(5, 15)))
    for offset in offsets:
        steps.append((t + offset, _fraud_txn(case, customer, rng.randint(50, 500),
                                             counterparty_id=merchant_id(merchant), **card)))
    t += offsets[-1]
    for _ in range(rng.randint(1, 3)):
        t += rng.randint(2 * MINUTE_MS, 40 * MINUTE_MS)
        if rng.random() < 0.5:
            merchant = _RISKY_MERCHANT_BASE + rng.randrange(_RISKY_MERCHANTS)
        cents = int(customer.typical_cents * rng.uniform(4.0, 12.0))
        steps.append((t, _fraud_txn(case, customer, cents, counterparty_id=merchant_id(merchant),
                                    **card)))
    return steps


def _account_takeover(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                      new_session: SessionIds) -> list[Step]:
    """Failed logins and security changes from a new device, then transfers that drain the account."""
    device = f"dx{rng.randrange(_FRAUD_DEVICES):04d}"
    ip = rng.choice(_FRAUD_IP_COUNTRIES) if rng.random() < 0.7 else HOME_COUNTRY
    channel = customer.app_channel
    where = {"device_id": device, "channel": channel, "ip_country": ip}
    steps: list[Step] = []
    t = case.start_ms
    for _ in range(rng.randint(2, 6)):
        steps.append((t, ScriptedApp({"action": "login_failed", **where})))
        t += rng.randint(5 * SECOND_MS, 40 * SECOND_MS)
    session = {"session_id": new_session(), **where}
    t += rng.randint(30 * SECOND_MS, 5 * MINUTE_MS)
    steps.append((t, ScriptedApp({"action": "login", **session})))
    changes = [a for a in ("password_reset", "contact_change", "device_bind") if rng.random() < 0.6]
    for action in changes or [rng.choice(("password_reset", "device_bind"))]:
        t += rng.randint(20 * SECOND_MS, 2 * MINUTE_MS)
        steps.append((t, ScriptedApp({"action": action, **session})))
    t += rng.randint(3 * MINUTE_MS, 6 * HOUR_MS)
    steps.append((t, ScriptedApp({"action": "transfer_out_view", **session})))
    country = ip if ip != HOME_COUNTRY and rng.random() < 0.3 else HOME_COUNTRY
    for payee in _mule_payees(rng, rng.randint(1, 3)):
        t += rng.randint(30 * SECOND_MS, 10 * MINUTE_MS)
        steps.append((t, _fraud_txn(
            case, customer, 0, drain=rng.uniform(0.5, 0.95), txn_type="transfer",
            direction="debit", channel=channel, counterparty_id=payee,
            counterparty_country=country, device_id=device)))
    return steps


def _structuring(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                 new_session: SessionIds) -> list[Step]:
    """3-6 cash deposits just under the reporting threshold within 1-3 days, then a transfer out."""
    window = int(min(rng.uniform(1.0, 3.0) * DAY_MS, max(HOUR_MS, (end_ms - case.start_ms) // 2)))
    times = sorted(case.start_ms + rng.randrange(window) for _ in range(rng.randint(3, 6)))
    steps: list[Step] = []
    total = 0
    for t in times:
        cents = rng.randint(450, 499) * 100_00
        total += cents
        branch = rng.random() < 0.6
        fields: dict[str, Any] = {"txn_type": "cash_deposit", "direction": "credit",
                                  "channel": "branch" if branch else "atm"}
        if branch:
            t = _business_hours(rng, t)
        else:
            fields["counterparty_id"] = f"t{rng.randrange(100):05d}"
        steps.append((t, _fraud_txn(case, customer, cents, **fields)))
    t = max(t for t, _ in steps) + rng.randint(HOUR_MS, DAY_MS)
    steps.append((t, _fraud_txn(
        case, customer, int(total * rng.uniform(0.9, 1.0)), txn_type="transfer",
        direction="debit", channel=customer.app_channel,
        counterparty_id=_mule_payees(rng, 1)[0], counterparty_country=HOME_COUNTRY,
        device_id=customer.devices[0])))
    return steps


def _business_hours(rng: random.Random, ts_ms: int) -> int:
    # Branch counters open 09:00-17:00 local; a visit planned outside moves to the next opening.
    hour = local_hour(ts_ms)
    if 9 <= hour < 17:
        return ts_ms
    day_start = (ts_ms + LOCAL_UTC_OFFSET_MS) // DAY_MS * DAY_MS - LOCAL_UTC_OFFSET_MS
    if hour >= 17:
        day_start += DAY_MS
    return day_start + 9 * HOUR_MS + rng.randrange(6 * HOUR_MS)


def _mule_in_out(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                 new_session: SessionIds) -> list[Step]:
    """A large credit from an unseen sender, passed on to 2-5 new payees within 1-12 hours."""
    incoming = rng.randint(20_000, 200_000) * 100
    source = f"p{_MULE_SOURCE_BASE + rng.randrange(_MULE_SOURCES):06d}"
    steps: list[Step] = [(case.start_ms, _fraud_txn(
        case, customer, incoming, txn_type="transfer", direction="credit", channel="api",
        counterparty_id=source, counterparty_country=HOME_COUNTRY))]
    payees = _mule_payees(rng, rng.randint(2, 5))
    shares = [rng.uniform(0.5, 1.5) for _ in payees]
    out_total = incoming * rng.uniform(0.8, 1.0)
    times = sorted(rng.randint(HOUR_MS, 12 * HOUR_MS) for _ in payees)
    for offset, payee, share in zip(times, payees, shares, strict=True):
        steps.append((case.start_ms + offset, _fraud_txn(
            case, customer, int(out_total * share / sum(shares)), txn_type="transfer",
            direction="debit", channel=customer.app_channel, counterparty_id=payee,
            counterparty_country=HOME_COUNTRY, device_id=customer.devices[0])))
    return steps


def _foreign_spend(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                   new_session: SessionIds) -> list[Step]:
    """A burst of large card payments in a country the customer has never paid in."""
    country = rng.choice([c for c in FOREIGN_COUNTRIES if c not in customer.travel_countries])
    span = rng.randint(HOUR_MS, 5 * HOUR_MS)
    steps: list[Step] = []
    for offset in sorted(rng.randrange(span) for _ in range(rng.randint(3, 10))):
        steps.append((case.start_ms + offset, _fraud_txn(
            case, customer, int(customer.typical_cents * rng.uniform(3.0, 10.0)),
            txn_type="card_payment", direction="debit", channel="pos",
            counterparty_id=foreign_merchant(country, rng.randrange(_FOREIGN_MERCHANTS_PER_COUNTRY)),
            counterparty_country=country,
            merchant_category=rng.choice(("electronics", "retail", "travel", "entertainment")))))
    return steps


def _dormant_reactivation(rng: random.Random, customer: Customer, case: Case, end_ms: int,
                          new_session: SessionIds) -> list[Step]:
    """After months of silence (arranged by the generator) a login from a new device empties the account."""
    device = f"dx{rng.randrange(_FRAUD_DEVICES):04d}"
    session = {"session_id": new_session(), "device_id": device,
               "channel": customer.app_channel, "ip_country": HOME_COUNTRY}
    t = case.start_ms
    steps: list[Step] = [(t, ScriptedApp({"action": "login", **session}))]
    t += rng.randint(2 * MINUTE_MS, 60 * MINUTE_MS)
    steps.append((t, _fraud_txn(
        case, customer, 0, drain=rng.uniform(0.7, 1.0), txn_type="transfer", direction="debit",
        channel=session["channel"], counterparty_id=_mule_payees(rng, 1)[0],
        counterparty_country=HOME_COUNTRY, device_id=device)))
    return steps


_Planner = Callable[[random.Random, Customer, Case, int, SessionIds], list[Step]]
_PLANNERS: Final[dict[str, _Planner]] = {
    CARD_TESTING: _card_testing,
    ACCOUNT_TAKEOVER: _account_takeover,
    STRUCTURING: _structuring,
    MULE_IN_OUT: _mule_in_out,
    FOREIGN_SPEND: _foreign_spend,
    DORMANT_REACTIVATION: _dormant_reactivation,
}
