"""Next-best action in closed loop through the engine itself, on the built-in simulator.

    python -m bench.nba_loop [--customers 500] [--days 150] [--seed 7] [--jobs 1]
    python run.py evaluate --nba [--customers 500] [--days 150] [--seed 7]

The simulator's customers carry latent product preferences (``simulator.preferences``: a taste
per action category around their segment's, shifted by the trigger moment, the category of
the product they viewed and the distance between a product's risk and their own grade). The
engine's exact per-event logic (the three step objects of ``flows.steps``, called directly as
``bench.bare_loop`` does) runs over the simulated stream, and every prompt it emits is
answered by the simulation's responder (``simulator.responder``): ``nba_accepted`` then
``nba_converted``, ``nba_accepted`` alone, ``nba_dismissed`` or nothing, hours later in event
time. The answers re-enter the stream as feedback events, in event-time order with everything
else, and the engine learns from them as it would live. Batches of events span at most
``SPAN_MS`` of event time and every answer comes at least 2.4 hours after its prompt, so the
prompts of a batch are answered before the simulation reaches their answers' times
(``late_answers`` counts the exceptions, moved forward to the simulation's time: an item due
in the batch may emit nothing and the next event come hours later); the run is deterministic.

Policies, each swapped into the engine's bandit (``Shard.nba.policy.policy``)
on the same simulation (the customers' own events are identical in every run; only the answers
differ with the prompts):

- ``bandit``: the engine's LinUCB, learning from the answers it caused;
- ``random``: a uniformly random eligible action;
- ``fixed:<action>``: that action whenever it is eligible, else a random eligible one, for
  every action of the catalogue; the best of these after learning is the best fixed action in
  hindsight.

Reported: conversion rate (prompts whose answer was a conversion / prompts), cumulative at the
end of every 30 days and after learning (prompts from ``learned_from_day`` on), the ratios
bandit / random and bandit / best fixed; the mean conversion probability of the actions chosen
(the same comparison without the luck of the draws); ``oracle``, the mean over the bandit's
prompts of the best probability among the actions the customer is suitable for at that
moment (knows the latent tastes and the product viewed: an upper bound no policy reaches), and
the same without knowing the product viewed (the engine's context names the category of a
viewed product only when the action catalogue lists it, which the simulator's app products are
not); the prompts that break a contact rule, by an independent check
(``bench.nba_baselines.RuleCheck``) against the simulation's records (each customer's profile,
the prompts and answers) and the engine's fraud alerts: it must be 0 for every policy.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

from bench.nba_baselines import FixedPolicy, RandomPolicy, RuleCheck
from config.actions import load_actions
from config.settings import Settings, load_settings
from detectors.nba import FEEDBACK_LABELS, Action, CustomerFacts
from engine.shard import Record, Shard
from flows.items import Sequenced
from flows.modes import engine_config, event_clock
from schemas.events import Feedback, event_from_obj
from schemas.outputs import Alert, DeadLetter, LifecycleChange, Prompt
from simulator import Simulation, SimulatorConfig
from simulator.population import Customer
from simulator.responder import Responder

DAY = 86400.0
PERIOD_DAYS = 30
SPAN_MS = 15 * 60 * 1000  # a batch's span of event time
BATCH = 500  # and its size at most, as the replay source's batches
PART = "simulator"


@dataclass
class LoopResult:
    """What one policy did over the run (counts per period of ``PERIOD_DAYS``)."""

    name: str
    prompts: list[int]
    conversions: list[int]
    expected: list[float]  # sum of the chosen actions' conversion probabilities
    oracle: list[float]  # sum of the best suitable action's probability, prompt by prompt
    oracle_blind: list[float]  # the same without knowing which product was viewed
    accepted: int = 0
    dismissed: int = 0
    unanswered: int = 0
    outcomes: list[bool] = field(default_factory=list)  # converted or not, prompt by prompt
    actions: Counter[str] = field(default_factory=Counter)
    triggers: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    late_answers: int = 0
    events: int = 0
    seconds: float = 0.0

    def rate(self, upto: int | None = None, since: int = 0) -> float:
        p = sum(self.prompts[since:upto])
        return sum(self.conversions[since:upto]) / p if p else 0.0

    def expected_rate(self, since: int = 0) -> float:
        p = sum(self.prompts[since:])
        return sum(self.expected[since:]) / p if p else 0.0

    def oracle_rate(self, since: int = 0, blind: bool = False) -> float:
        p = sum(self.prompts[since:])
        return sum((self.oracle_blind if blind else self.oracle)[since:]) / p if p else 0.0


def _fraud_type(record: Alert | LifecycleChange) -> bool:
    kind = record.type if isinstance(record, Alert) else record.alert_type
    return kind != "churn_risk" and (isinstance(record, Alert) or record.action in ("deduplicated", "grouped",
                                                                                  "escalated", "suppressed"))


def _policy(name: str, seed: int) -> RandomPolicy | None:
    if name == "bandit":
        return None
    if name == "random":
        return RandomPolicy(seed)
    if name.startswith("fixed:"):
        return FixedPolicy(name.split(":", 1)[1], seed)
    raise ValueError(f"unknown policy {name!r}")


class _Loop:
    """One closed-loop run: the simulation, the engine and the records."""

    def __init__(self, settings: Settings, config: SimulatorConfig, policy: str) -> None:
        self.settings = settings
        catalogue = load_actions(settings.nba.catalogue or None)
        self.catalogue: dict[str, Action] = {a.action_id: a for a in catalogue}
        self.responder = Responder(config.seed, self.catalogue)
        self.simulation = Simulation(config, with_truth=False, responder=self.responder)
        self.shard = Shard(engine_config(settings, event_clock))
        nba = self.shard.nba
        if nba is None:
            raise ValueError("next-best action is disabled in the settings ([nba] enabled)")
        baseline = _policy(policy, config.seed)
        if baseline is not None:
            nba.policy.policy = baseline
        self.check = RuleCheck(settings.nba, self.catalogue)
        self.fraud_alert_t: dict[str, float] = {}  # customer -> their latest fraud alert
        self.start_t = config.start_ms / 1000.0
        n_periods = math.ceil(config.days / PERIOD_DAYS)
        zeros = [0] * n_periods
        self.result = LoopResult(policy, list(zeros), list(zeros), [0.0] * n_periods, [0.0] * n_periods,
                                 [0.0] * n_periods)

    def run(self) -> LoopResult:
        started = time.perf_counter()
        simulation, seq, limit_ms = self.simulation, 0, 0
        batch: list[Sequenced] = []
        for obj, _ in simulation.run():
            event = event_from_obj(obj)
            if not batch:
                limit_ms = round(event.t * 1000) + SPAN_MS
            batch.append(Sequenced(PART, seq, event))
            seq += 1
            upcoming = simulation.next_ms()
            if len(batch) >= BATCH or upcoming is None or upcoming >= limit_ms:
                self._process(batch)
                batch = []
        if batch:
            self._process(batch)
        result = self.result
        result.late_answers, result.events = simulation.late_answers, seq
        result.seconds = time.perf_counter() - started
        return result

    def _process(self, batch: list[Sequenced]) -> None:
        """The batch through the engine at once (as the dataflow hands it over), then event
        by event its records: fraud alerts, answers and every prompt to the simulation's
        customers."""
        events = [item.event for item in batch]
        by_event: dict[str, list[Record]] = defaultdict(list)
        for record in self.shard.process(events):
            if isinstance(record, DeadLetter):  # an evaluation stops on a failing event
                raise RuntimeError(record.reason)
            event_id = getattr(record, "event_id", None)
            if event_id is not None:  # not a model report
                by_event[event_id].append(record)
        for event in events:
            customer = event.customer_id
            records = by_event.get(event.event_id, [])
            for record in records:
                if isinstance(record, Alert | LifecycleChange) and _fraud_type(record):
                    self.fraud_alert_t[customer] = event.t  # a fraud alert decided, emitted or merged
            if isinstance(event, Feedback):
                if event.label == "legit":
                    self.fraud_alert_t.pop(customer, None)
                elif event.label in FEEDBACK_LABELS and event.ref_prompt_id:
                    self.check.answer(event.ref_prompt_id, event.label, event.t)
            for record in records:
                if isinstance(record, Prompt):
                    self._prompted(record, event.t)

    def _prompted(self, prompt: Prompt, t: float) -> None:
        state = self.simulation.customer_state(prompt.customer_id)
        assert state is not None, prompt
        customer = state.customer
        opened = self.fraud_alert_t.get(customer.customer_id)
        facts = CustomerFacts(customer.risk_level, customer.marketing_opt_out, customer.segment, customer.rm_id,
                              opened is not None and t - opened < self.settings.nba.open_fraud_days * DAY)
        self.check.prompt(prompt, t, facts)
        response = self.simulation.response(prompt)
        assert response is not None
        self.simulation.answer(prompt)
        result = self.result
        period = min(len(result.prompts) - 1, int((t - self.start_t) / (PERIOD_DAYS * DAY)))
        result.prompts[period] += 1
        result.conversions[period] += response.converted
        result.expected[period] += response.probability
        viewed = self.simulation.viewed_category(prompt)
        result.oracle[period] += self._best_probability(customer, facts, prompt, viewed)
        result.oracle_blind[period] += self._best_probability(customer, facts, prompt, None)
        result.outcomes.append(response.converted)
        result.accepted += response.accepted
        result.dismissed += response.dismissed
        result.unanswered += not response.answers
        result.actions[prompt.action] += 1
        result.triggers[prompt.trigger] += 1

    def _best_probability(self, customer: Customer, facts: CustomerFacts, prompt: Prompt,
                          viewed: str | None) -> float:
        """The best conversion probability among the actions the customer is suitable for at
        this moment (contact load and cooldowns aside), ``viewed`` being the category of the
        product whose view triggered the prompt, as far as the oracle is told."""
        best = 0.0
        for action in self.catalogue.values():
            if action.kind == "product" and action.risk > customer.risk_level:
                continue
            if (action.sales and facts.open_fraud_alert) or (action.triggers and prompt.trigger not in action.triggers):
                continue
            best = max(best, self.responder.probability(customer, action.action_id, prompt.trigger, viewed))
        return best


def run_policy(settings: Settings, config: SimulatorConfig, policy: str) -> LoopResult:
    """One closed-loop run of the engine with ``policy`` (``bandit``, ``random`` or
    ``fixed:<action>``) on the simulation ``config``."""
    return _Loop(settings, config, policy).run()


def policies(settings: Settings) -> list[str]:
    """The bandit, random, then a fixed policy per action of the catalogue."""
    return ["bandit", "random"] + [f"fixed:{a.action_id}" for a in load_actions(settings.nba.catalogue or None)]


def evaluate(settings: Settings, config: SimulatorConfig, names: Sequence[str] | None = None,
             jobs: int = 1) -> list[LoopResult]:
    """Every policy of ``names`` (default: ``policies(settings)``) on the same simulation,
    ``jobs`` runs at a time (processes)."""
    names = list(names or policies(settings))
    if jobs <= 1:
        return [run_policy(settings, config, name) for name in names]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_policy, [settings] * len(names), [config] * len(names), names))


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def report(results: list[LoopResult], days: float, learned_from_day: float = 60.0) -> str:
    """The tables: cumulative conversion by period, after learning, the start of learning,
    contact-rule violations."""
    by_name = {r.name: r for r in results}
    bandit, random_ = by_name["bandit"], by_name["random"]
    learned = int(learned_from_day // PERIOD_DAYS)
    fixed = [r for r in results if r.name.startswith("fixed:")]
    best = max(fixed, key=lambda r: r.rate(since=learned)) if fixed else random_
    name = best.name.split(":", 1)[-1]
    lines = [f"best fixed action in hindsight (after learning): {name}", "",
             "cumulative conversion rate (conversions / prompts) at the end of each period",
             f"{'days':>9} {'prompts':>8} {'bandit':>8} {'random':>8} {'best fixed':>10} {'bandit/random':>14}"
             f" {'bandit/fixed':>13} | per period: {'bandit':>7} {'random':>7} {'ratio':>6}"]
    for i in range(len(bandit.prompts)):
        start, end = i * PERIOD_DAYS, min(days, (i + 1) * PERIOD_DAYS)
        b, r, f = bandit.rate(i + 1), random_.rate(i + 1), best.rate(i + 1)
        bp, rp = bandit.rate(i + 1, i), random_.rate(i + 1, i)
        lines.append(f"{start:>4.0f}-{end:<4.0f} {sum(bandit.prompts[:i + 1]):>8} {b:>8.4f} {r:>8.4f} {f:>10.4f}"
                     f" {_ratio(b, r):>14.2f} {_ratio(b, f):>13.2f} | {'':>11} {bp:>7.4f} {rp:>7.4f}"
                     f" {_ratio(bp, rp):>6.2f}")
    b, r, f = bandit.rate(since=learned), random_.rate(since=learned), best.rate(since=learned)
    lines += ["", f"after learning (prompts from day {learned * PERIOD_DAYS} on): bandit {b:.4f}, random {r:.4f}, "
              f"best fixed {f:.4f}; bandit / random = {_ratio(b, r):.2f}, bandit / best fixed = {_ratio(b, f):.2f}",
              f"mean conversion probability of the actions chosen, after learning: bandit "
              f"{bandit.expected_rate(learned):.4f}, random {random_.expected_rate(learned):.4f}, best fixed "
              f"{best.expected_rate(learned):.4f} (bandit / random = "
              f"{_ratio(bandit.expected_rate(learned), random_.expected_rate(learned)):.2f})",
              f"oracle (the best suitable action for each of the bandit's prompts, knowing the latent tastes): "
              f"{bandit.oracle_rate(learned):.4f}; knowing the tastes but not the product viewed: "
              f"{bandit.oracle_rate(learned, blind=True):.4f}"]
    block = 250
    n = min(len(bandit.outcomes), len(random_.outcomes))
    lines += ["", f"the start of learning: conversion rate per block of {block} prompts",
              f"{'prompts':>11} {'bandit':>8} {'random':>8}"]
    for start in range(0, min(8 * block, n), block):
        end = min(start + block, n)
        rates = [sum(res.outcomes[start:end]) / (end - start) for res in (bandit, random_)]
        lines.append(f"{start + 1:>5}-{end:<5} {rates[0]:>8.4f} {rates[1]:>8.4f}")
    lines += ["", "prompts, answers and contact-rule violations per policy"]
    for res in sorted(results, key=lambda res: (res.name not in ("bandit", "random"), -res.rate(since=learned))):
        total = sum(res.violations.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(res.violations.items())) or "none"
        lines.append(f"  {res.name:<38} prompts {sum(res.prompts):>6}  after learning {res.rate(since=learned):.4f}"
                     f"  converted {sum(res.conversions):>5}  accepted {res.accepted:>5}  dismissed "
                     f"{res.dismissed:>5}  violations {total} ({detail})")
    violations = sum(sum(res.violations.values()) for res in results)
    lines.append(f"violations over all {len(results)} policies run: {violations}")
    lines.append("bandit's triggers: " + ", ".join(f"{k} {v}" for k, v in bandit.triggers.most_common()))
    lines.append("bandit's most frequent actions: " + ", ".join(f"{k} {v}" for k, v in bandit.actions.most_common(6)))
    late = sum(res.late_answers for res in results)
    seconds = [res.seconds for res in results]
    lines.append(f"events per run: {bandit.events}; answers moved to a later time (late): {late}; "
                 f"seconds per run: {min(seconds):.1f}-{max(seconds):.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nba_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=1, help="policies run at a time, in processes (default 1)")
    parser.add_argument("--learned-from-day", type=float, default=60.0,
                        help="prompts from this day on count as after learning (default 60)")
    args = parser.parse_args(argv)
    return run(load_settings(), args.customers, args.days, args.seed, args.jobs, args.learned_from_day)


def run(settings: Settings, customers: int, days: float, seed: int, jobs: int = 1,
        learned_from_day: float = 60.0) -> int:
    """Evaluate and print the report; exit status 1 if any prompt broke a contact rule."""
    settings = replace(settings, nba=replace(settings.nba, enabled=True))
    config = SimulatorConfig(customers=customers, days=days, seed=seed)
    started = time.perf_counter()
    results = evaluate(settings, config, jobs=jobs)
    print(f"next-best action in closed loop through the engine: {customers} customers, {days:g} days, seed {seed}")
    print(report(results, days, learned_from_day))
    print(f"({time.perf_counter() - started:.1f} s, {len(results)} runs, {jobs} at a time)")
    return 1 if any(res.violations for res in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
