"""Next-best-action in a closed loop: the shared bandit against a random eligible policy and
against the best fixed action, with every contact rule re-checked.

    python -m bench.nba_eval [--customers 2000] [--days 180] [--seed 7]

Simulated customers carry *latent product preferences* that the policy never sees
(``simulator.preferences``, the same model as the engine's own simulator): a taste per
category drawn around their segment's (mass customers like deposits, private customers
alternatives, research and their RM's call), shifted by the trigger moment (a maturity makes a
reminder and a reinvestment welcome, rising churn risk makes a call the thing to do, products
unwelcome), by the product they were just looking at, and by how far the product's risk is from
their own risk grade. Each customer's events (long and short product views of the catalogue's
products, large and small credits and debits, maturities, logins after a long absence, churn
scores) run in event-time order through :class:`detectors.nba.NextBestAction`; each prompt is
answered hours later by ``simulator.responder``: ``nba_accepted`` then ``nba_converted``,
``nba_accepted`` alone, ``nba_dismissed``, or nothing (the prompt expires). The same customers
and events are used for every policy, and the same prompt (trigger and action) always gets the
same answer:

- ``bandit``: :class:`detectors.nba.LinUCB`, learning from the feedback it caused;
- ``random``: a uniformly random eligible action;
- ``oracle``: the eligible action most likely to convert given the latent preferences (an
  upper bound no real policy reaches);
- ``fixed:<action>``: that action whenever it is eligible, else a random eligible one; the
  best of these in hindsight (highest conversion rate) is reported as ``best fixed``.

Reported: conversion rate (conversions / prompts), cumulative by period of 30 days and per
period, and the ratio bandit / random; and the number of prompts that break a contact rule
(opt-out, suitability, weekly cap, dismissal cooldown, sales under an open fraud alert, a
repeat while pending, an action outside its triggers), counted by an independent check
(``bench.nba_baselines.RuleCheck``) against the simulation's own records: it must be 0 for
every policy. This is a toy world built for the detector alone; ``bench.nba_loop`` runs the
whole engine in closed loop on the engine's own simulator.

``python -m bench.nba_eval`` (2,000 customers, 180 days, seed 7; 26,737 prompts per policy,
29 s on 2 shared cores) printed, cumulative conversion rate at the end of each 30 days:

    days    bandit  random  best fixed (maturity_reminder)  bandit/random
    0-30    0.2107  0.1016  0.1375                          2.07
    0-60    0.2138  0.0992  0.1295                          2.16
    0-90    0.2136  0.0976  0.1278                          2.19
    0-120   0.2139  0.0974  0.1260                          2.20
    0-150   0.2132  0.0972  0.1253                          2.19
    0-180   0.2145  0.0964  0.1241                          2.22

After learning (prompts from day 60 on): bandit 0.2149, random 0.0950 (2.26x), best fixed
action 0.1213 (1.77x), oracle 0.2276 (the bandit reaches 94 % of it). By blocks of 500 prompts
the bandit goes 0.118, 0.202, 0.226, 0.212 over the first 2,000 prompts (random stays near
0.10): it learns within the first few days, as 14 actions and a 22-feature context need only
a few hundred answers. Contact-rule violations: 0 for all 17 policies run. Seeds 8 and 9 gave
bandit / random after learning 2.35 and 2.39, bandit / best fixed 1.76 and 1.76, 0 violations.

The simulation is kind to a linear model: the latent taste is additive in the logit over
features the context carries (segment, risk grade, trigger, viewed category), and only the
per-customer noise is hidden; real preferences will be harder to learn than this.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.nba_baselines import FixedPolicy, RandomPolicy, RuleCheck
from config.actions import load_actions
from detectors.nba import (
    CATEGORIES,
    TRIGGERS,
    Action,
    CustomerFacts,
    NBAParams,
    NBAState,
    NextBestAction,
)
from schemas.events import AppEvent, Event, Feedback, Transaction
from schemas.outputs import format_ts
from simulator.preferences import TASTE_CATEGORIES, conversion_probability, draw_tastes
from simulator.responder import Responder

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0
PERIOD_DAYS = 30

SEGMENTS = (("mass", 0.6), ("affluent", 0.3), ("private", 0.1))
# Risk grade C1..C5 weights per segment.
RISK_WEIGHTS = {"mass": (0.3, 0.35, 0.2, 0.1, 0.05), "affluent": (0.1, 0.2, 0.35, 0.25, 0.1),
                "private": (0.05, 0.1, 0.25, 0.3, 0.3)}


@dataclass(frozen=True)
class Customer:
    """A simulated customer: profile facts the engine sees, and latent tastes it does not
    (``simulator.preferences``)."""

    customer_id: str
    segment: str
    risk_level: int
    opt_out: bool
    tastes: tuple[float, ...]
    fraud_window: tuple[float, float] | None  # an open fraud alert during [start, end)

    def facts(self, t: float) -> CustomerFacts:
        fraud = self.fraud_window is not None and self.fraud_window[0] <= t < self.fraud_window[1]
        return CustomerFacts(self.risk_level, self.opt_out, self.segment, f"rm{int(self.customer_id[1:]) % 40:03d}",
                             fraud)

    def p_convert(self, action: Action, trigger: str, viewed_category: str | None) -> float:
        return conversion_probability(self.tastes, self.risk_level, action, trigger, viewed_category)


def population(n: int, days: float, rng: random.Random, seed: int) -> list[Customer]:
    customers = []
    for i in range(n):
        segment = rng.choices([s for s, _ in SEGMENTS], [w for _, w in SEGMENTS])[0]
        risk = rng.choices(range(1, 6), RISK_WEIGHTS[segment])[0]
        fraud = None
        if rng.random() < 0.05:
            start = T0 + rng.uniform(0, days) * DAY
            fraud = (start, start + rng.uniform(5, 30) * DAY)
        customers.append(Customer(f"c{i:05d}", segment, risk, rng.random() < 0.08, draw_tastes(seed, i, segment),
                                  fraud))
    return customers


def timeline(customer: Customer, catalogue: Sequence[Action], days: float, rng: random.Random) -> list[Event]:
    """The customer's own events (no feedback): triggers and ordinary activity."""
    products = [a for a in catalogue if a.product_id]
    weights = [math.exp(customer.tastes[TASTE_CATEGORIES.index(a.category)]) for a in products]
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
    violations: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    outcomes: list[bool] = field(default_factory=list)  # converted or not, prompt by prompt

    def rate(self, upto: int | None = None, since: int = 0) -> float:
        p = sum(self.prompts[since:upto])
        return sum(self.conversions[since:upto]) / p if p else 0.0


def run_policy(name: str, nba: NextBestAction, customers: list[Customer], events: list[Event], days: float,
               seed: int) -> Result:
    n_periods = math.ceil(days / PERIOD_DAYS)
    result = Result(name, [0] * n_periods, [0] * n_periods)
    by_id = {a.action_id: a for a in nba.catalogue}
    category_of = {a.product_id: a.category for a in nba.catalogue if a.product_id}
    check = RuleCheck(nba.params, by_id)
    responder = Responder(seed, by_id)
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
            if isinstance(event, Feedback):
                check.answer(event.ref_prompt_id or "", event.label, event.t)
            prompt = nba.on_event(state, facts, event)
            viewed = category_of.get(event.product_id) if isinstance(event, AppEvent) and event.product_id else None
        if prompt is None:
            continue
        check.prompt(prompt, event.t, facts)
        period = min(n_periods - 1, int((event.t - T0) / (PERIOD_DAYS * DAY)))
        result.prompts[period] += 1
        result.actions[prompt.action] += 1
        response = responder.respond(prompt, customer, viewed)
        result.conversions[period] += response.converted
        result.outcomes.append(response.converted)
        result.accepted += response.accepted
        for i, answer in enumerate(response.answers):
            t = answer.t_ms / 1000.0
            seq += 1
            heapq.heappush(queue, (t, seq, Feedback(f"fb-{prompt.prompt_id}-{i}", format_ts(t), t,
                                                    event.customer_id, answer.label,
                                                    ref_prompt_id=prompt.prompt_id)))
    result.violations = check.violations
    return result


def evaluate(n_customers: int, days: float, seed: int, params: NBAParams | None = None) -> list[Result]:
    """Run the bandit, the random policy, the oracle and every fixed action on the same
    simulation, in that order."""
    params = params or NBAParams(seed=seed)
    catalogue = load_actions()
    rng = random.Random(seed)
    customers = population(n_customers, days, rng, seed)
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
    for res in [bandit, random_, fixed, oracle]:
        total = sum(res.violations.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(res.violations.items())) or "none"
        lines.append(f"  {res.name:<40} prompts {sum(res.prompts):>6}  conversions {sum(res.conversions):>5}  "
                     f"accepted {res.accepted:>5}  violations {total} ({detail})")
    all_violations = sum(sum(res.violations.values()) for res in results)
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
