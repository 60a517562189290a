"""Customers who leave: a legitimate pattern the churn models should catch.

A churner's ordinary activity fades linearly to nothing between ``fade_from_ms`` and
``gone_ms`` (the generator applies the fade); ``plan_churn`` adds the signs a bank sees on the
way out: a complaint and a support chat, a look at the transfer-out and account-closing pages,
perhaps an unsubscribe, and most of the balance moved to an account elsewhere. The generator
emits a ``churned`` feedback label some days after ``gone_ms`` (and a ``retained`` label for a
sample of the customers who stay, half of whom first wobble: their activity dips for a few
weeks, perhaps with a complaint, and comes back; ``plan_wobble``). None of it is fraud, so these
large transfers to new payees are realistic false-positive bait for the fraud detectors.

>>> import random
>>> from simulator.population import Pools, build_customer
>>> from simulator.typologies import DAY_MS
>>> rng = random.Random(5)
>>> c = build_customer(rng, 1, Pools.for_customers(10))
>>> steps = plan_churn(rng, c, 0, 20 * DAY_MS, 30 * DAY_MS, lambda: "s1", payees=1000)
>>> [s.fields["txn_type"] for _, s in steps if isinstance(s, ScriptedTxn)]
['transfer']
"""

from __future__ import annotations

import random
from typing import Final

from simulator.population import HOME_COUNTRY, Customer
from simulator.typologies import (
    MINUTE_MS,
    SECOND_MS,
    ScriptedApp,
    ScriptedTxn,
    SessionIds,
    Step,
)

_COMPLAINT_TOPICS: Final = ("fees", "service", "app_outage", "interest_rate", "card_declined")
#: A churner fades out over this many days (uniform): the latent hazard shows in behaviour
#: weeks before the customer is gone.
FADE_DAYS: Final = (20.0, 45.0)
#: Share of the customers confirmed ``retained`` who first wobble: their activity declines
#: towards ``RECOVERY_FLOOR`` over ``RECOVERY_DAYS`` (uniform), then is back to full.
RECOVERING_SHARE: Final = 0.5
RECOVERY_FLOOR: Final = 0.3
RECOVERY_DAYS: Final = (10.0, 25.0)
#: The ``churned`` label arrives this many days after the last activity (uniform).
LABEL_DELAY_DAYS: Final = (3.0, 10.0)
#: Share of staying customers confirmed ``retained`` at some point in the second half of a run,
#: so a churn model learning online sees negative labels too.
RETAINED_LABEL_RATE: Final = 0.1


def plan_churn(rng: random.Random, customer: Customer, fade_from_ms: int, gone_ms: int,
               end_ms: int, new_session: SessionIds, payees: int) -> list[Step]:
    """The exit signals of a churner leaving between ``fade_from_ms`` and ``gone_ms``."""
    span = gone_ms - fade_from_ms
    steps: list[Step] = []
    if customer.app_rate > 0:
        t = fade_from_ms + int(rng.uniform(0.0, 0.25) * span)
        steps += _session(rng, customer, t, new_session(), _complaint(rng))
        t = fade_from_ms + int(rng.uniform(0.3, 0.6) * span)
        exit_actions = [ScriptedApp({"action": "transfer_out_view"}),
                        ScriptedApp({"action": "account_close_view"})]
        if not customer.marketing_opt_out and rng.random() < 0.5:
            exit_actions.append(ScriptedApp({"action": "unsubscribe"}))
        steps += _session(rng, customer, t, new_session(), exit_actions)
    channel = customer.app_channel if customer.app_rate > 0 else "branch"
    fields = {"account_id": customer.account_id, "txn_type": "transfer", "direction": "debit",
              "channel": channel, "counterparty_id": f"p{rng.randrange(payees):06d}",
              "counterparty_country": HOME_COUNTRY}
    if channel != "branch":
        fields["device_id"] = customer.devices[0]
    t = fade_from_ms + int(rng.uniform(0.6, 0.9) * span)
    steps.append((t, ScriptedTxn(fields, 0, drain=rng.uniform(0.8, 0.98))))
    steps.sort(key=lambda step: step[0])
    return [step for step in steps if step[0] < end_ms]


def plan_wobble(rng: random.Random, customer: Customer, fade_from_ms: int, recover_ms: int,
                end_ms: int, new_session: SessionIds) -> list[Step]:
    """A customer who recovers: sometimes a complaint while their activity dips, no exit."""
    steps: list[Step] = []
    if customer.app_rate > 0 and rng.random() < 0.5:
        t = fade_from_ms + int(rng.uniform(0.0, 0.5) * (recover_ms - fade_from_ms))
        steps += _session(rng, customer, t, new_session(), _complaint(rng))
    return [step for step in steps if step[0] < end_ms]


def _complaint(rng: random.Random) -> list[ScriptedApp]:
    return [
        ScriptedApp({"action": "complaint",
                     "properties": {"topic": rng.choice(_COMPLAINT_TOPICS)}}),
        ScriptedApp({"action": "support_chat", "duration_ms": rng.randint(60_000, 900_000)}),
    ]


def _session(rng: random.Random, customer: Customer, t: int, session_id: str,
             actions: list[ScriptedApp]) -> list[Step]:
    """``actions`` wrapped in a login/logout session on the customer's usual device."""
    where = {"session_id": session_id, "device_id": customer.devices[0],
             "channel": customer.app_channel}
    steps: list[Step] = [(t, ScriptedApp({"action": "login", "ip_country": HOME_COUNTRY, **where}))]
    for action in [*actions, ScriptedApp({"action": "logout"})]:
        t += rng.randint(10 * SECOND_MS, 3 * MINUTE_MS)
        steps.append((t, ScriptedApp({**action.fields, **where})))
    return steps
