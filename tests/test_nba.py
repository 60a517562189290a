"""Next-best-action: contact rules hold for any customer, catalogue and history; triggers,
determinism and learning of the shared bandit."""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.actions import load_actions
from config.settings import ConfigError
from detectors.customer import Summary
from detectors.nba import (
    CATEGORIES,
    N_FEATURES,
    TRIGGERS,
    WEEK,
    Action,
    CustomerFacts,
    LinUCB,
    NBAParams,
    NBAState,
    NextBestAction,
    NextBestActions,
    ineligibility,
)
from schemas.events import AppEvent, Event, Feedback, Transaction
from schemas.outputs import Prompt, format_ts

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0


def view(eid: str, t: float, cid: str = "c1", product_id: str | None = None, ms: int = 120_000) -> AppEvent:
    return AppEvent(eid, format_ts(t), t, cid, "product_view", product_id=product_id, duration_ms=ms)


def login(eid: str, t: float, cid: str = "c1") -> AppEvent:
    return AppEvent(eid, format_ts(t), t, cid, "login")


def credit(eid: str, t: float, amount: float, cid: str = "c1", txn_type: str | None = "transfer",
           direction: str = "credit") -> Transaction:
    return Transaction(eid, format_ts(t), t, cid, amount, direction=direction,  # type: ignore[arg-type]
                       txn_type=txn_type)


def feedback(eid: str, t: float, label: str, prompt_id: str | None, cid: str = "c1") -> Feedback:
    return Feedback(eid, format_ts(t), t, cid, label, ref_prompt_id=prompt_id)


# -- property tests: no prompt ever breaks a contact rule ---------------------------------------

@st.composite
def catalogues(draw: st.DrawFn) -> tuple[Action, ...]:
    n = draw(st.integers(1, 8))
    actions = []
    for i in range(n):
        if draw(st.booleans()):
            actions.append(Action(f"p{i}", "product", draw(st.sampled_from(CATEGORIES)), draw(st.integers(1, 5)),
                                  f"P{i}", ttl_hours=draw(st.sampled_from([1.0, 24.0, 72.0, 168.0]))))
        else:
            triggers = draw(st.sampled_from([(), ("maturity",), ("churn_rising", "login_after_absence")]))
            # A service action may be flagged as sales by the catalogue: then the fraud rule applies.
            actions.append(Action(f"s{i}", "service", "relationship", sales=draw(st.booleans()),
                                  triggers=triggers, ttl_hours=draw(st.sampled_from([1.0, 48.0, 168.0]))))
    return tuple(actions)


facts_st = st.builds(CustomerFacts, risk_level=st.one_of(st.none(), st.integers(1, 5)),
                     marketing_opt_out=st.booleans(), segment=st.sampled_from([None, "mass", "affluent", "private"]),
                     rm_id=st.just("rm1"), open_fraud_alert=st.booleans())

step_st = st.tuples(
    st.integers(0, 2),  # customer
    st.one_of(st.floats(0.0, 3 * 3600.0), st.floats(0.0, 4 * DAY)),  # time since the previous step
    st.sampled_from(["view", "short_view", "credit", "maturity", "login", "churn", "feedback", "fraud",
                     "profile"]),
    st.integers(0, 1000),  # a choice: which prompt answered, which product viewed, ...
    st.sampled_from(["nba_dismissed", "nba_dismissed", "nba_accepted", "nba_converted", "fraud"]),
    st.floats(0.0, 1.0),
)


@dataclass
class Oracle:
    """The rules, kept from what the test itself saw (not from the detector's state)."""

    sent: dict[str, list[float]] = field(default_factory=dict)
    dismissed: dict[tuple[str, str], float] = field(default_factory=dict)
    live: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # prompt -> customer, action, expiry

    def check(self, prompt: Prompt, t: float, facts: CustomerFacts, action: Action, p: NBAParams) -> None:
        cid = prompt.customer_id
        assert not facts.marketing_opt_out, "prompt to an opted-out customer"
        if action.kind == "product":
            assert facts.risk_level is not None and action.risk <= facts.risk_level, "unsuitable product"
        if facts.open_fraud_alert:
            assert not action.sales, "sales prompt under an open fraud alert"
        recent = [s for s in self.sent.get(cid, []) if t - WEEK < s <= t]
        assert len(recent) < p.max_prompts_per_week, "weekly contact cap exceeded"
        last = self.dismissed.get((cid, action.action_id))
        assert last is None or t - last >= p.cooldown_days * DAY, "prompt during a dismissal cooldown"
        if action.triggers:
            assert prompt.trigger in action.triggers
        assert prompt.action == action.action_id and prompt.product_id == action.product_id
        assert 0.0 <= prompt.score <= 1.0
        self.sent.setdefault(cid, []).append(t)
        self.live[prompt.prompt_id] = (cid, action.action_id, t + action.ttl_hours * 3600.0)

    def answer(self, prompt_id: str, cid: str, label: str, t: float) -> None:
        live = self.live.get(prompt_id)
        if live is None or live[0] != cid or live[2] <= t:
            return
        if label == "nba_dismissed":
            self.dismissed[(cid, live[1])] = t
        if label in ("nba_dismissed", "nba_converted"):
            del self.live[prompt_id]


@settings(max_examples=150, deadline=None)
@given(catalogues(), st.lists(facts_st, min_size=3, max_size=3), st.lists(step_st, max_size=60),
       st.integers(1, 4), st.sampled_from([0.5, 3.0, 14.0]), st.integers(0, 3))
def test_no_prompt_breaks_a_contact_rule(catalogue: tuple[Action, ...], facts: list[CustomerFacts],
                                         steps: list[tuple[int, float, str, int, str, float]], cap: int,
                                         cooldown: float, seed: int) -> None:
    params = NBAParams(max_prompts_per_week=cap, cooldown_days=cooldown, absence_days=2.0, seed=seed)
    nba = NextBestAction(catalogue, params)
    by_id = {a.action_id: a for a in catalogue}
    products = [a.product_id for a in catalogue if a.product_id] + [None]
    states = [NBAState() for _ in range(3)]
    oracle = Oracle()
    prompts: list[Prompt] = []
    t = T0
    for i, (c, gap, what, choice, label, value) in enumerate(steps):
        t += gap
        cid, eid = f"c{c}", f"e{i}"
        prompt: Prompt | None = None
        event: Event | None = None
        if what == "view":
            event = view(eid, t, cid, products[choice % len(products)])
        elif what == "short_view":
            event = view(eid, t, cid, products[choice % len(products)], ms=1_000)
        elif what == "credit":
            event = credit(eid, t, 1_000.0 * choice, cid)
        elif what == "maturity":
            event = credit(eid, t, 10_000.0, cid, txn_type="deposit_maturity")
        elif what == "login":
            event = login(eid, t, cid)
        elif what == "feedback" and prompts:
            own = [q for q in prompts if q.customer_id == cid]
            # Mostly the customer's latest prompt; sometimes any prompt, another customer's
            # included (which must not match).
            answered = own[-1] if own and choice % 3 else prompts[choice % len(prompts)]
            event = feedback(eid, t, label, answered.prompt_id, cid)
            oracle.answer(answered.prompt_id, cid, label, t)
        elif what == "churn":
            prompt = nba.on_churn(states[c], facts[c], value, eid, format_ts(t), t, cid)
        elif what == "fraud":
            facts[c] = replace(facts[c], open_fraud_alert=not facts[c].open_fraud_alert)
        elif what == "profile":
            facts[c] = replace(facts[c], risk_level=None if choice % 6 == 0 else choice % 6,
                               marketing_opt_out=value < 0.3)
        if event is not None:
            prompt = nba.on_event(states[c], facts[c], event)
        if prompt is not None:
            assert prompt.customer_id == cid
            oracle.check(prompt, t, facts[c], by_id[prompt.action], params)
            prompts.append(prompt)
    for state in states:
        assert len(state.pending) <= params.max_pending
        assert len(state.sent) <= cap
        pickle.loads(pickle.dumps(state))


@settings(max_examples=300, deadline=None)
@given(catalogues(), facts_st, st.sampled_from(TRIGGERS))
def test_eligible_actions_are_exactly_those_no_rule_forbids(catalogue: tuple[Action, ...], facts: CustomerFacts,
                                                            trigger_type: str) -> None:
    nba = NextBestAction(catalogue)
    state = NBAState()
    trigger = nba.trigger_of(state, view("e", T0, product_id="P0"))
    assert trigger is not None
    trigger = replace(trigger, type=trigger_type)
    eligible = {a.action_id for a in nba.eligible(state, facts, trigger)}
    for a in catalogue:
        allowed = (not facts.marketing_opt_out
                   and (a.kind == "service" or (facts.risk_level is not None and a.risk <= facts.risk_level))
                   and not (a.sales and facts.open_fraud_alert)
                   and (not a.triggers or trigger_type in a.triggers))
        assert (a.action_id in eligible) == allowed


# -- rules one by one ----------------------------------------------------------------------------

CALL = Action("rm_call", "service", "relationship")
DEPOSIT = Action("offer_time_deposit", "product", "deposit", 1, "DEP-TD")
EQUITY = Action("offer_equity_fund", "product", "equity", 4, "FND-EQ")


def test_weekly_cap_counts_every_prompt_in_the_last_seven_days() -> None:
    nba = NextBestAction((CALL, DEPOSIT), NBAParams(max_prompts_per_week=2))
    state, facts = NBAState(), CustomerFacts(risk_level=3)
    assert nba.on_event(state, facts, view("e1", T0)) is not None
    assert nba.on_event(state, facts, view("e2", T0 + DAY)) is not None
    assert nba.on_event(state, facts, view("e3", T0 + 2 * DAY)) is None  # cap reached
    assert ineligibility(CALL, facts, state, None, T0 + 2 * DAY, nba.params) == "weekly_cap"
    assert nba.on_event(state, facts, view("e4", T0 + 7 * DAY + 1)) is not None  # the first left the week


def test_dismissal_starts_a_cooldown_for_that_action_only() -> None:
    p = NBAParams(cooldown_days=14.0, max_prompts_per_week=10)
    nba = NextBestAction((DEPOSIT,), p)
    state, facts = NBAState(), CustomerFacts(risk_level=3)
    first = nba.on_event(state, facts, view("e1", T0))
    assert first is not None
    nba.on_event(state, facts, feedback("f1", T0 + 3600, "nba_dismissed", first.prompt_id))
    assert nba.on_event(state, facts, view("e2", T0 + 5 * DAY)) is None
    assert ineligibility(DEPOSIT, facts, state, None, T0 + 13 * DAY, p) == "cooldown"
    assert ineligibility(CALL, facts, state, None, T0 + 13 * DAY, p) is None
    assert nba.on_event(state, facts, view("e3", T0 + 14 * DAY + 3601)) is not None


def test_open_fraud_alert_allows_service_actions_only() -> None:
    nba = NextBestAction((DEPOSIT, CALL), NBAParams(max_prompts_per_week=10))
    state, facts = NBAState(), CustomerFacts(risk_level=5, open_fraud_alert=True)
    for i in range(5):
        prompt = nba.on_event(state, facts, view(f"e{i}", T0 + i * 4 * DAY))
        assert prompt is not None and prompt.action == "rm_call" and prompt.product_id is None


def test_opt_out_means_no_prompt_at_all() -> None:
    nba = NextBestAction((DEPOSIT, CALL))
    facts = CustomerFacts(risk_level=5, marketing_opt_out=True)
    assert nba.on_event(NBAState(), facts, view("e1", T0)) is None


def test_unknown_risk_grade_allows_no_product() -> None:
    assert ineligibility(DEPOSIT, CustomerFacts(), NBAState(), None, T0, NBAParams()) == "suitability"


# -- triggers ------------------------------------------------------------------------------------

def test_triggers() -> None:
    nba = NextBestAction((DEPOSIT, EQUITY, CALL))
    state = NBAState(last_seen_t=T0)

    def kind(event: Event) -> str | None:
        trigger = nba.trigger_of(state, event)
        return None if trigger is None else trigger.type

    assert kind(view("e", T0 + 60, product_id="FND-EQ", ms=90_000)) == "product_view"
    assert nba.trigger_of(state, view("e", T0, product_id="FND-EQ")).category == "equity"  # type: ignore[union-attr]
    assert kind(view("e", T0 + 60, ms=5_000)) is None
    assert kind(credit("e", T0 + 60, 80_000.0)) == "large_credit"
    assert kind(credit("e", T0 + 60, 500.0)) is None
    assert kind(credit("e", T0 + 60, 80_000.0, direction="debit")) is None
    assert kind(credit("e", T0 + 60, 500.0, txn_type="deposit_maturity")) == "maturity"
    assert kind(AppEvent("e", "", T0 + 60, "c1", "maturity_notice", product_id="DEP-TD")) == "maturity"
    assert kind(login("e", T0 + 31 * DAY)) == "login_after_absence"
    assert kind(login("e", T0 + 3 * DAY)) is None
    assert kind(AppEvent("e", "", T0 + 40 * DAY, "c1", "search")) is None  # not a login


def test_login_after_absence_measures_from_the_last_event() -> None:
    nba = NextBestAction((CALL,), NBAParams(absence_days=30.0))
    state, facts = NBAState(), CustomerFacts()
    assert nba.on_event(state, facts, login("e1", T0)) is None  # nothing seen before
    assert nba.on_event(state, facts, credit("e2", T0 + 20 * DAY, 10.0)) is None
    assert nba.on_event(state, facts, login("e3", T0 + 45 * DAY)) is None  # 25 days since e2
    prompt = nba.on_event(state, facts, login("e4", T0 + 80 * DAY))
    assert prompt is not None and prompt.trigger == "login_after_absence"


def test_churn_trigger_fires_on_crossing_upwards_only() -> None:
    nba = NextBestAction((CALL,), NBAParams(churn_level=0.7, max_prompts_per_week=10))
    state, facts = NBAState(), CustomerFacts()
    fired = [nba.on_churn(state, facts, s, f"e{i}", "", T0 + i * 3 * DAY, "c1") is not None
             for i, s in enumerate([0.2, 0.75, 0.9, 0.5, 0.8])]
    assert fired == [False, True, False, False, True]


def test_the_stream_lets_go_of_what_cannot_matter_and_keeps_the_rules() -> None:
    """``NextBestActions``, as the engine drives it: events that cannot be a trigger leave no
    state, yet count as seen for the absence trigger; a churn score prompts only on crossing;
    a fraud alert holds sales back until a ``legit`` label."""
    nba = NextBestActions((DEPOSIT, CALL), NBAParams(absence_days=30.0, churn_level=0.7,
                                                     max_prompts_per_week=10))
    last: list[float | None] = [None]

    def on(event: Event, alerted: bool = False, churn: float | None = None) -> Prompt | None:
        summary = Summary("rm1", "mass", 3, False, T0, event.t, last[0], None, 0, 0)
        last[0] = event.t
        return nba.on_event(event, summary, alerted, churn_score=churn)

    assert on(credit("d1", T0, 20.0, direction="debit")) is None and not nba.states  # let go
    assert on(login("l1", T0 + DAY)) is None  # a day after the debit: no absence
    assert on(credit("d2", T0 + 20 * DAY, 20.0, direction="debit")) is None
    assert on(login("l2", T0 + 45 * DAY)) is None  # 25 days after the debit that was let go
    assert on(credit("d3", T0 + 46 * DAY, 20.0, direction="debit"), churn=0.5) is None
    assert nba.states["c1"].churn_score == 0.5
    rising = on(credit("d4", T0 + 47 * DAY, 20.0, direction="debit"), churn=0.8)
    assert rising is not None and rising.trigger == "churn_rising"
    assert on(credit("d5", T0 + 48 * DAY, 20.0, direction="debit"), churn=0.9) is None  # no new crossing
    assert on(credit("x1", T0 + 49 * DAY, 900.0, direction="debit"), alerted=True) is None
    held = on(view("v1", T0 + 50 * DAY))
    assert held is not None and held.action == "rm_call"  # sales wait for the fraud alert
    assert on(Feedback("f1", format_ts(T0 + 51 * DAY), T0 + 51 * DAY, "c1", "legit", ref_event_id="x1")) is None
    assert "c1" not in nba.fraud_alert_t
    sale = on(view("v2", T0 + 52 * DAY))
    assert sale is not None and sale.action == "offer_time_deposit"


# -- prompts, feedback and learning --------------------------------------------------------------

def test_prompt_carries_the_contract_fields_in_order() -> None:
    nba = NextBestAction((DEPOSIT, CALL))
    prompt = nba.on_event(NBAState(), CustomerFacts(risk_level=2, rm_id="rm7"), view("e1", T0))
    assert prompt is not None
    keys = list(orjson.loads(prompt.to_bytes()))
    assert keys[:10] == ["prompt_id", "customer_id", "rm_id", "action", "product_id", "score", "reasons",
                         "expires_at", "policy_version", "trigger"]
    assert "schema_version" in keys and prompt.rm_id == "rm7"
    assert prompt.expires_at == format_ts(T0 + 72 * 3600)


def test_same_seed_same_prompts_and_model() -> None:
    catalogue = load_actions()
    rng = random.Random(5)
    events = [view(f"e{i}", T0 + i * 3600, f"c{i % 7}", rng.choice(["FND-EQ-TECH", "DEP-TD-12M", None]))
              for i in range(200)]

    def run(seed: int) -> tuple[list[bytes], bytes]:
        nba = NextBestAction(catalogue, NBAParams(seed=seed))
        states = {f"c{i}": NBAState() for i in range(7)}
        out = []
        for e in events:
            facts = CustomerFacts(risk_level=1 + int(e.customer_id[1:]) % 5, segment="affluent")
            prompt = nba.on_event(states[e.customer_id], facts, e)
            if prompt is not None:
                out.append(prompt.to_bytes())
                answer = "nba_converted" if prompt.action.endswith("deposit") else "nba_dismissed"
                nba.on_event(states[e.customer_id], facts, feedback("f" + e.event_id, e.t + 60, answer,
                                                                    prompt.prompt_id, e.customer_id))
        return out, pickle.dumps(nba.policy)

    assert run(3) == run(3)
    assert run(3)[0] != run(4)[0]


def test_feedback_matches_only_the_customers_own_live_prompts() -> None:
    nba = NextBestAction((DEPOSIT,))
    mine, other, facts = NBAState(), NBAState(), CustomerFacts(risk_level=3)
    prompt = nba.on_event(mine, facts, view("e1", T0))
    assert prompt is not None
    nba.on_event(other, facts, feedback("f0", T0 + 60, "nba_converted", prompt.prompt_id, "c2"))
    nba.on_event(mine, facts, feedback("f1", T0 + 60, "fraud", prompt.prompt_id))
    nba.on_event(mine, facts, feedback("f2", T0 + 60, "nba_converted", "nb-unknown"))
    assert nba.policy.n_updates == 0
    nba.on_event(mine, facts, feedback("f3", T0 + 120, "nba_accepted", prompt.prompt_id))
    assert nba.policy.n_updates == 1
    nba.on_event(mine, facts, feedback("f4", T0 + 180, "nba_converted", prompt.prompt_id))
    assert nba.policy.n_updates == 1 and not mine.pending  # a revision, not a second sample
    x = mine_context = [1.0] + [0.0] * (N_FEATURES - 1)
    assert nba.policy.estimate("offer_time_deposit", mine_context)[0] > nba.policy.estimate("other", x)[0]


def test_accepted_then_converted_equals_learning_the_conversion() -> None:
    x = [1.0, 0.0, 1.0] + [0.0] * 3
    revised, direct = LinUCB(6, seed=0), LinUCB(6, seed=0)
    revised.update("a", x, 0.3)
    revised.revise("a", x, 0.3, 1.0)
    direct.update("a", x, 1.0)
    assert revised.estimate("a", x) == pytest.approx(direct.estimate("a", x))


def test_unanswered_prompt_is_learned_as_zero_at_expiry_and_late_answers_are_ignored() -> None:
    nba = NextBestAction((DEPOSIT,), NBAParams(max_prompts_per_week=10))
    state, facts = NBAState(), CustomerFacts(risk_level=3)
    prompt = nba.on_event(state, facts, view("e1", T0))
    assert prompt is not None
    nba.on_event(state, facts, feedback("f1", T0 + 4 * DAY, "nba_dismissed", prompt.prompt_id))
    assert nba.policy.n_updates == 1 and not state.dismissed and not state.pending
    assert nba.policy.counts["offer_time_deposit"] == 1
    assert not np.any(nba.policy._b[nba.policy.index["offer_time_deposit"]])  # learned as reward 0


def test_bandit_learns_the_best_action_per_context() -> None:
    # Two contexts; the best arm differs between them; conversion probabilities are stationary.
    probs = {0: {"a": 0.6, "b": 0.2, "c": 0.1}, 1: {"a": 0.1, "b": 0.2, "c": 0.5}}
    bandit, rng = LinUCB(3, alpha=0.5, seed=1), random.Random(2)
    late_best = 0
    for i in range(3000):
        ctx = rng.randrange(2)
        x = (1.0, float(ctx == 0), float(ctx == 1))
        arm = bandit.pull(["a", "b", "c"], x)[0]
        bandit.update(arm, x, float(rng.random() < probs[ctx][arm]))
        if i >= 2500:
            late_best += arm == max(probs[ctx], key=probs[ctx].__getitem__)
    assert late_best / 500 > 0.9


def test_bandit_only_ever_pulls_an_offered_arm() -> None:
    bandit = LinUCB(2, seed=0)
    for _ in range(50):
        bandit.update("best", (1.0, 1.0), 1.0)
    assert bandit.pull(["other"], (1.0, 1.0))[0] == "other"
    with pytest.raises(ValueError):
        bandit.pull([], (1.0, 1.0))


def test_state_and_policy_stay_small() -> None:
    nba = NextBestAction(load_actions())
    state, facts = NBAState(), CustomerFacts(risk_level=4, segment="private")
    for i in range(3000):
        prompt = nba.on_event(state, facts, view(f"e{i}", T0 + i * 6 * 3600, product_id="FND-EQ-TECH"))
        if prompt is not None and i % 3:
            nba.on_event(state, facts, feedback(f"f{i}", T0 + i * 6 * 3600 + 60, "nba_accepted", prompt.prompt_id))
    assert len(pickle.dumps(state)) < 3_000
    assert len(pickle.dumps(nba.policy)) < 120_000


# -- the catalogue ---------------------------------------------------------------------------------

def test_catalogue_loads_and_rejects_bad_entries(tmp_path: Path) -> None:
    actions = load_actions()
    assert all(a.sales == (a.kind == "product") for a in actions)
    assert {"rm_call", "branch_visit", "send_research", "maturity_reminder"} <= {a.action_id for a in actions}
    bad = {
        "unknown key": 'id = "x"\nkind = "service"\ncategory = "c"\ncolour = "red"',
        "needs risk 1..5": 'id = "x"\nkind = "product"\ncategory = "c"\nproduct_id = "P"\nrisk = 7',
        "product_id": 'id = "x"\nkind = "product"\ncategory = "c"\nrisk = 2',
        "no product risk": 'id = "x"\nkind = "service"\ncategory = "c"\nrisk = 2',
        "unknown triggers": 'id = "x"\nkind = "service"\ncategory = "c"\ntriggers = ["birthday"]',
    }
    for message, body in bad.items():
        path = tmp_path / "a.toml"
        path.write_text(f"[[action]]\n{body}\n")
        with pytest.raises(ConfigError, match=message):
            load_actions(path)
    path = tmp_path / "dup.toml"
    path.write_text('[[action]]\nid = "x"\nkind = "service"\ncategory = "c"\n' * 2)
    with pytest.raises(ConfigError, match="duplicate"):
        load_actions(path)


# -- the closed-loop evaluation (bench.nba_eval), small ------------------------------------------

def test_closed_loop_bandit_beats_random_and_breaks_no_rule() -> None:
    from bench.nba_eval import evaluate

    results = evaluate(n_customers=300, days=90, seed=7)
    bandit, random_ = results[0], results[1]
    assert [r.name for r in results[:3]] == ["bandit", "random", "oracle"]
    assert all(not r.violations for r in results)
    assert sum(bandit.prompts) > 1000
    assert bandit.rate(since=2) >= 1.5 * random_.rate(since=2)
    assert bandit.rate(since=2) > max(r.rate(since=2) for r in results[3:])  # every fixed action
