"""Next-best-action in a closed loop: the shared bandit against a random eligible policy and
against the best fixed action, with every contact rule re-checked.

    python -m bench.nba_eval [--customers 2000] [--days 180] [--seed 7]

Simulated customers carry *latent product preferences* that the policy never sees: a taste
per category drawn around their segment's (mass customers like deposits, private customers
alternatives, research and their RM's call), shifted by the trigger moment (a maturity makes a
reminder and a reinvestment welcome, rising churn risk makes a call the thing to do, products
unwelcome), by the product they were just looking at, and by how far the product's risk is from
their own risk grade. Each customer's events (long and short product views, large and small
credits and debits, maturities, logins after a long absence, churn scores) run in event-time
order through :class:`detectors.nba.NextBestAction`; each prompt is answered hours later with
feedback events drawn from the customer's preferences: ``nba_accepted`` then ``nba_converted``,
``nba_accepted`` alone, ``nba_dismissed``, or nothing (the prompt expires). The same customers,
events and random draws (one uniform per trigger event) are used for every policy:

- ``bandit``: :class:`detectors.nba.LinUCB`, learning from the feedback it caused;
- ``random``: a uniformly random eligible action;
- ``oracle``: the eligible action most likely to convert given the latent preferences (an
  upper bound no real policy reaches);
- ``fixed:<action>``: that action whenever it is eligible, else a random eligible one; the
  best of these in hindsight (highest conversion rate) is reported as ``best fixed``.

Reported: conversion rate (conversions / prompts), cumulative by period of 30 days and per
period, and the ratio bandit / random; and the number of prompts that break a contact rule
(opt-out, suitability, weekly cap, dismissal cooldown, sales under an open fraud alert), counted
by an independent check against the simulation's own records: it must be 0 for every policy.

``python -m bench.nba_eval`` (2,000 customers, 180 days, seed 7; 26,766 prompts per policy,
37 s on 2 shared cores) printed, cumulative conversion rate at the end of each 30 days:

    days    bandit  random  best fixed (maturity_reminder)  bandit/random
    0-30    0.1987  0.0847  0.1238                          2.35
    0-60    0.2002  0.0848  0.1187                          2.36
    0-90    0.2084  0.0879  0.1231                          2.37
    0-120   0.2121  0.0917  0.1242                          2.31
    0-150   0.2114  0.0913  0.1227                          2.31
    0-180   0.2128  0.0917  0.1231                          2.32

After learning (prompts from day 60 on): bandit 0.2194, random 0.0952 (2.30x), best fixed
action 0.1253 (1.75x), oracle 0.2295 (the bandit reaches 96 % of it). By blocks of 500 prompts
the bandit goes 0.120, 0.172, 0.190, 0.210 over the first 2,000 prompts (random stays near
0.08): it learns within the first few days, as 14 actions and a 22-feature context need only
a few hundred answers. Contact-rule violations: 0 for all 17 policies run. Seeds 8 and 9 gave
bandit / random after learning 2.38 and 2.43, bandit / best fixed 1.70 and 1.73, 0 violations.

The simulation is kind to a linear model: the latent taste is additive in the logit over
features the context carries (segment, risk grade, trigger, viewed category), and only the
per-customer noise is hidden; real preferences will be harder to learn than this.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from config.actions import load_actions
from detectors.nba import (
    CATEGORIES,
    TRIGGERS,
    WEEK,
    Action,
    CustomerFacts,
    NBAParams,
    NBAState,
    NextBestAction,
)
from schemas.events import AppEvent, Event, Feedback, Transaction
from schemas.outputs import Prompt, format_ts

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0
PERIOD_DAYS = 30

SEGMENTS = (("mass", 0.6), ("affluent", 0.3), ("private", 0.1))
# Risk grade C1..C5 weights per segment.
RISK_WEIGHTS = {"mass": (0.3, 0.35, 0.2, 0.1, 0.05), "affluent": (0.1, 0.2, 0.35, 0.25, 0.1),
                "private": (0.05, 0.1, 0.25, 0.3, 0.3)}
# Latent taste per segment and action category (logit shifts).
SEGMENT_TASTE = {
    "mass": {"deposit": 1.0, "wealth": 0.3, "bond": 0.0, "fund": -0.3, "equity": -0.8, "alternative": -2.0,
             "relationship": -0.5, "research": -1.5, "reminder": 0.0},
    "affluent": {"deposit": 0.0, "wealth": 0.8, "bond": 0.5, "fund": 0.5, "equity": 0.0, "alternative": -1.0,
                 "relationship": 0.0, "research": -0.3, "reminder": 0.0},
    "private": {"deposit": -1.0, "wealth": 0.3, "bond": 0.3, "fund": 0.2, "equity": 0.6, "alternative": 1.2,
                "relationship": 0.8, "research": 0.8, "reminder": 0.0},
}
PRODUCT_CATEGORIES = ("deposit", "wealth", "bond", "fund", "equity", "alternative")
# How each trigger moment shifts the taste for a category.
TRIGGER_TASTE = {
    "product_view": {},
    "large_credit": {"deposit": 0.6, "wealth": 0.8, "fund": 0.3},
    "maturity": {"reminder": 2.2, "deposit": 0.8, "wealth": 0.5},
    "churn_rising": {"relationship": 2.0, **{c: -1.0 for c in PRODUCT_CATEGORIES}},
    "login_after_absence": {"research": 0.8, "relationship": 0.6, **{c: -0.3 for c in PRODUCT_CATEGORIES}},
}
BASE_LOGIT = -3.0
VIEWED_MATCH = 1.5  # the category of the product just viewed
RISK_DISTANCE = 0.35  # per grade between the product's risk and the customer's grade
NOISE = 0.5  # per-customer, per-category taste not explained by segment


@dataclass(frozen=True)
class Customer:
    """A simulated customer: profile facts the engine sees, and latent taste it does not."""

    customer_id: str
    segment: str
    risk_level: int
    opt_out: bool
    taste: dict[str, float]
    fraud_window: tuple[float, float] | None  # an open fraud alert during [start, end)

    def facts(self, t: float) -> CustomerFacts:
        fraud = self.fraud_window is not None and self.fraud_window[0] <= t < self.fraud_window[1]
        return CustomerFacts(self.risk_level, self.opt_out, self.segment, f"rm{int(self.customer_id[1:]) % 40:03d}",
                             fraud)

    def p_convert(self, action: Action, trigger: str, viewed_category: str | None) -> float:
        logit = BASE_LOGIT + self.taste[action.category] + TRIGGER_TASTE[trigger].get(action.category, 0.0)
        if viewed_category is not None and viewed_category == action.category:
            logit += VIEWED_MATCH
        if action.kind == "product":
            logit -= RISK_DISTANCE * abs(action.risk - self.risk_level)
        return 1.0 / (1.0 + math.exp(-logit))


def population(n: int, days: float, rng: random.Random) -> list[Customer]:
    customers = []
    categories = tuple(SEGMENT_TASTE["mass"])
    for i in range(n):
        segment = rng.choices([s for s, _ in SEGMENTS], [w for _, w in SEGMENTS])[0]
        risk = rng.choices(range(1, 6), RISK_WEIGHTS[segment])[0]
        taste = {c: SEGMENT_TASTE[segment][c] + rng.gauss(0.0, NOISE) for c in categories}
        fraud = None
        if rng.random() < 0.05:
            start = T0 + rng.uniform(0, days) * DAY
            fraud = (start, start + rng.uniform(5, 30) * DAY)
        customers.append(Customer(f"c{i:05d}", segment, risk, rng.random() < 0.08, taste, fraud))
    return customers


def timeline(customer: Customer, catalogue: Sequence[Action], days: float, rng: random.Random) -> list[Event]:
    """The customer's own events (no feedback): triggers and ordinary activity."""
    products = [a for a in catalogue if a.product_id]
    weights = [math.exp(customer.taste[a.category]) for a in products]
    events: list[Event] = []
    cid, t, end = customer.customer_id, T0 + rng.uniform(0, 5) * DAY, T0 + days * DAY
    while True:
        absence = rng.random() < 0.04
        t += rng.uniform(31, 50) * DAY if absence else rng.expovariate(1 / (2.5 * DAY))
        if t >= end:
            return events
        eid, ts = f"{cid}-{len(events)}", format_ts(t)
        if absence:
            events.append(AppEvent(eid, ts, t, cid, "login"))
            continue
        kind = rng.choices(("view", "short_view", "large_credit", "small_txn", "maturity", "churn"),
                           (0.2, 0.2, 0.08, 0.35, 0.07, 0.1))[0]
        if kind in ("view", "short_view"):
            product = rng.choices(products, weights)[0]
            ms = rng.randint(60_000, 600_000) if kind == "view" else rng.randint(1_000, 30_000)
            events.append(AppEvent(eid, ts, t, cid, "product_view", product_id=product.product_id, duration_ms=ms))
        elif kind == "large_credit":
            events.append(Transaction(eid, ts, t, cid, round(rng.uniform(50_000, 500_000), 2), direction="credit",
                                      txn_type="transfer"))
        elif kind == "small_txn":
            events.append(Transaction(eid, ts, t, cid, round(rng.uniform(10, 5_000), 2),
                                      direction=rng.choice(("debit", "credit")), txn_type="card_payment"))
        elif kind == "maturity":
            events.append(Transaction(eid, ts, t, cid, round(rng.uniform(10_000, 300_000), 2), direction="credit",
                                      txn_type="deposit_maturity"))
        else:
            # A churn score update (computed elsewhere in the engine), as an app event's property.
            events.append(AppEvent(eid, ts, t, cid, "churn_score", properties={"score": rng.random() ** 0.7}))


def uniform(seed: int, key: str) -> float:
    """A uniform draw fixed by (seed, key): every policy meets the same luck at a trigger."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class RandomPolicy:
    """A uniformly random eligible action; learns nothing."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        return self._rng.choice(list(arms)), 0.0, 0.0

    def update(self, arm: str, x: Sequence[float], reward: float) -> None:
        pass

    def revise(self, arm: str, x: Sequence[float], old: float, new: float) -> None:
        pass


class FixedPolicy(RandomPolicy):
    """One action whenever it is eligible, else a random eligible one."""

    def __init__(self, action_id: str, seed: int) -> None:
        super().__init__(seed)
        self.action_id = action_id

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        return (self.action_id, 0.0, 0.0) if self.action_id in arms else super().pull(arms, x)


class OraclePolicy(RandomPolicy):
    """Knows the latent preferences: the eligible action most likely to convert (an upper
    bound, not a policy anyone could run). Reads the trigger and viewed category from the
    context vector; ``customer`` is set by the loop before each event."""

    def __init__(self, by_id: dict[str, Action], seed: int) -> None:
        super().__init__(seed)
        self.by_id = by_id
        self.customer: Customer | None = None

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        assert self.customer is not None
        at = 1 + len(SEGMENTS) + 5
        trigger = TRIGGERS[max(range(len(TRIGGERS)), key=lambda i: x[at + i])]
        at += len(TRIGGERS)
        viewed = [c for i, c in enumerate(CATEGORIES) if x[at + i] == 1.0]
        customer = self.customer
        best = max(arms, key=lambda a: customer.p_convert(self.by_id[a], trigger, viewed[0] if viewed else None))
        return best, 0.0, 0.0


@dataclass
class Result:
    """What one policy did over the run."""

    name: str
    prompts: list[int] = field(default_factory=list)  # per period
    conversions: list[int] = field(default_factory=list)
    accepted: int = 0
    violations: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    actions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outcomes: list[bool] = field(default_factory=list)  # converted or not, prompt by prompt

    def rate(self, upto: int | None = None, since: int = 0) -> float:
        p = sum(self.prompts[since:upto])
        return sum(self.conversions[since:upto]) / p if p else 0.0


class RuleCheck:
    """The contact rules, re-checked from the simulation's own records of what happened."""

    def __init__(self, params: NBAParams, by_id: dict[str, Action]) -> None:
        self.params, self.by_id = params, by_id
        self.sent: dict[str, list[float]] = defaultdict(list)
        self.dismissed: dict[tuple[str, str], float] = {}
        self.expiry: dict[str, tuple[str, str, float]] = {}

    def prompt(self, prompt: Prompt, t: float, facts: CustomerFacts, result: Result) -> None:
        action, cid = self.by_id[prompt.action], prompt.customer_id
        if facts.marketing_opt_out:
            result.violations["opt_out"] += 1
        if action.kind == "product" and (facts.risk_level is None or action.risk > facts.risk_level):
            result.violations["suitability"] += 1
        if action.sales and facts.open_fraud_alert:
            result.violations["open_fraud"] += 1
        if sum(1 for s in self.sent[cid] if t - WEEK < s <= t) >= self.params.max_prompts_per_week:
            result.violations["weekly_cap"] += 1
        last = self.dismissed.get((cid, action.action_id))
        if last is not None and t - last < self.params.cooldown_days * DAY:
            result.violations["cooldown"] += 1
        self.sent[cid].append(t)
        self.expiry[prompt.prompt_id] = (cid, action.action_id, t + action.ttl_hours * 3600.0)

    def dismissal(self, prompt_id: str, t: float) -> None:
        cid, action_id, expires = self.expiry[prompt_id]
        if t < expires:
            self.dismissed[(cid, action_id)] = t


def run_policy(name: str, nba: NextBestAction, customers: list[Customer], events: list[Event], days: float,
               seed: int) -> Result:
    n_periods = math.ceil(days / PERIOD_DAYS)
    result = Result(name, [0] * n_periods, [0] * n_periods)
    by_id = {a.action_id: a for a in nba.catalogue}
    category_of = {a.product_id: a.category for a in nba.catalogue if a.product_id}
    check = RuleCheck(nba.params, by_id)
    customer_of = {c.customer_id: c for c in customers}
    states = {c.customer_id: NBAState() for c in customers}
    # Customer events are already in time order; feedback joins them through a heap.
    queue: list[tuple[float, int, Event]] = []
    seq = 0
    stream = iter(events)
    upcoming = next(stream, None)
    while upcoming is not None or queue:
        if queue and (upcoming is None or queue[0][0] < upcoming.t):
            event = heapq.heappop(queue)[2]
        else:
            assert upcoming is not None
            event, upcoming = upcoming, next(stream, None)
        customer = customer_of[event.customer_id]
        if isinstance(nba.policy, OraclePolicy):
            nba.policy.customer = customer
        state, facts = states[event.customer_id], customer.facts(event.t)
        if isinstance(event, AppEvent) and event.action == "churn_score":
            score = float((event.properties or {})["score"])
            prompt = nba.on_churn(state, facts, score, event.event_id, event.ts, event.t, event.customer_id)
            viewed = None
        else:
            if isinstance(event, Feedback) and event.label == "nba_dismissed":
                check.dismissal(event.ref_prompt_id or "", event.t)
            prompt = nba.on_event(state, facts, event)
            viewed = category_of.get(event.product_id) if isinstance(event, AppEvent) else None
        if prompt is None:
            continue
        check.prompt(prompt, event.t, facts, result)
        period = min(n_periods - 1, int((event.t - T0) / (PERIOD_DAYS * DAY)))
        result.prompts[period] += 1
        result.actions[prompt.action] += 1
        p = customer.p_convert(by_id[prompt.action], prompt.trigger, viewed)
        u = uniform(seed, prompt.event_id)
        answer_t = event.t + (1 + 46 * uniform(seed + 1, prompt.event_id)) * 3600.0
        converted = u < p
        result.conversions[period] += converted
        result.outcomes.append(converted)
        labels: tuple[str, ...]
        if converted:
            labels = ("nba_accepted", "nba_converted")
        elif u < min(0.95, 3.0 * p):
            labels = ("nba_accepted",)
        elif u < 0.92:
            labels = ("nba_dismissed",)
        else:
            labels = ()  # never answered: the prompt expires
        if labels:
            result.accepted += labels[0] == "nba_accepted"
        for i, label in enumerate(labels):
            t = answer_t + i * 12 * 3600.0
            seq += 1
            heapq.heappush(queue, (t, seq, Feedback(f"fb-{prompt.prompt_id}-{i}", format_ts(t), t,
                                                    event.customer_id, label, ref_prompt_id=prompt.prompt_id)))
    return result


def evaluate(n_customers: int, days: float, seed: int, params: NBAParams | None = None) -> list[Result]:
    """Run the bandit, the random policy, the oracle and every fixed action on the same
    simulation, in that order."""
    params = params or NBAParams(seed=seed)
    catalogue = load_actions()
    rng = random.Random(seed)
    customers = population(n_customers, days, rng)
    events = sorted((e for c in customers for e in timeline(c, catalogue, days, rng)),
                    key=lambda e: (e.t, e.event_id))
    runs: list[tuple[str, NextBestAction]] = [
        ("bandit", NextBestAction(catalogue, params)),
        ("random", NextBestAction(catalogue, params, RandomPolicy(seed))),
    ]
    runs.append(("oracle", NextBestAction(catalogue, params, OraclePolicy({a.action_id: a for a in catalogue}, seed))))
    runs += [(f"fixed:{a.action_id}", NextBestAction(catalogue, params, FixedPolicy(a.action_id, seed)))
             for a in catalogue]
    return [run_policy(name, nba, customers, events, days, seed) for name, nba in runs]


def report(results: list[Result], days: float) -> str:
    bandit, random_, oracle = results[0], results[1], results[2]
    fixed = max(results[3:], key=lambda r: r.rate())
    lines = [f"best fixed action in hindsight: {fixed.name.split(':', 1)[1]}", "",
             "cumulative conversion rate (conversions / prompts) at the end of each period",
             f"{'days':>9} {'prompts':>8} {'bandit':>8} {'random':>8} {'best fixed':>10} {'bandit/random':>14}"
             f" | per period: {'bandit':>7} {'random':>7} {'fixed':>7} {'ratio':>6}"]
    for i in range(len(bandit.prompts)):
        start, end = i * PERIOD_DAYS, min(days, (i + 1) * PERIOD_DAYS)
        b, r, f = bandit.rate(i + 1), random_.rate(i + 1), fixed.rate(i + 1)
        bp, rp, fp = bandit.rate(i + 1, i), random_.rate(i + 1, i), fixed.rate(i + 1, i)
        lines.append(f"{start:>4.0f}-{end:<4.0f} {sum(bandit.prompts[:i + 1]):>8} {b:>8.4f} {r:>8.4f} {f:>10.4f}"
                     f" {b / r if r else float('nan'):>14.2f} | {'':>11} {bp:>7.4f} {rp:>7.4f} {fp:>7.4f}"
                     f" {bp / rp if rp else float('nan'):>6.2f}")
    block = 500
    lines += ["", f"the start of learning: conversion rate per block of {block} prompts (all customers)",
              f"{'prompts':>11} {'bandit':>8} {'random':>8} {'best fixed':>10} {'oracle':>8}"]
    n = min(len(r.outcomes) for r in (bandit, random_, fixed, oracle))
    for start in range(0, min(4000, n), block):
        end = min(start + block, n)
        rates = [sum(r.outcomes[start:end]) / (end - start) for r in (bandit, random_, fixed, oracle)]
        lines.append(f"{start + 1:>5}-{end:<5} " + " ".join(f"{v:>8.4f}" for v in rates[:2])
                     + f" {rates[2]:>10.4f} {rates[3]:>8.4f}")
    learned = 2  # periods after the first 60 days
    lines += ["", f"after learning (day {learned * PERIOD_DAYS} on): bandit {bandit.rate(since=learned):.4f}, "
              f"random {random_.rate(since=learned):.4f}, best fixed {fixed.rate(since=learned):.4f}; "
              f"bandit / random = {bandit.rate(since=learned) / random_.rate(since=learned):.2f}, "
              f"bandit / best fixed = {bandit.rate(since=learned) / fixed.rate(since=learned):.2f}",
              f"oracle (knows the latent preferences, an upper bound): {oracle.rate(since=learned):.4f} after "
              f"learning, {oracle.rate():.4f} overall", "",
              "prompts, conversions and contact-rule violations per policy"]
    for r in [bandit, random_, fixed, oracle]:
        total = sum(r.violations.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(r.violations.items())) or "none"
        lines.append(f"  {r.name:<40} prompts {sum(r.prompts):>6}  conversions {sum(r.conversions):>5}  "
                     f"accepted {r.accepted:>5}  violations {total} ({detail})")
    all_violations = sum(sum(r.violations.values()) for r in results)
    lines.append(f"violations over all {len(results)} policies run: {all_violations}")
    top = sorted(bandit.actions.items(), key=lambda kv: -kv[1])[:6]
    lines.append("bandit's most frequent actions: " + ", ".join(f"{a} {n}" for a, n in top))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.nba_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    results = evaluate(args.customers, args.days, args.seed)
    print(f"next-best-action closed loop: {args.customers} customers, {args.days:g} days, seed {args.seed}")
    print(report(results, args.days))
    print(f"({time.perf_counter() - started:.1f} s)")
    violations = sum(sum(r.violations.values()) for r in results)
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
