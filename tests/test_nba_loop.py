"""The closed loop of next-best action: simulated customers with latent preferences answer the
engine's prompts, in the simulator itself, in the bare engine loop (``bench.nba_loop``) and in
the live simulator mode; and a simulation without prompts stays exactly what it was."""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import statistics
import threading
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import orjson
from bytewax.testing import run_main

from config.actions import load_actions
from config.settings import load_settings
from detectors.nba import Action
from flows.modes import demo_flow
from run import simulator_input
from schemas.events import event_from_obj, parse_timestamp
from schemas.outputs import Prompt, format_ts, prompt_id_for
from simulator import Simulation, SimulatorConfig, generate, write_jsonl
from simulator.population import Customer
from simulator.preferences import SEGMENT_TASTE, TASTE_CATEGORIES, conversion_probability, draw_tastes
from simulator.responder import ACCEPTED, CONVERTED, DISMISSED, Responder

CATALOGUE: dict[str, Action] = {a.action_id: a for a in load_actions()}
NBA_LABELS = {ACCEPTED, CONVERTED, DISMISSED}


def prompt_for(customer_id: str, action: str, t: float, trigger: str = "large_credit",
               event_id: str | None = None) -> Prompt:
    """A prompt as the engine makes it, triggered at event time ``t``."""
    event_id = event_id or f"trigger-{customer_id}-{t}"
    ttl = CATALOGUE[action].ttl_hours * 3600.0
    return Prompt(prompt_id_for(event_id, action), customer_id, "rm000", action, CATALOGUE[action].product_id, 0.0,
                  (), format_ts(t + ttl), "nba-linucb-1", trigger, event_id, format_ts(t))


def customers(n: int, seed: int = 7) -> list[Customer]:
    simulation = Simulation(SimulatorConfig(customers=n, days=1, seed=seed), responder=Responder(seed, CATALOGUE))
    for _ in zip(range(n), simulation.run(), strict=False):  # the profiles: every customer drawn
        pass
    return [state.customer for state in simulation.states]


# -- latent preferences and the responder -------------------------------------------------------

def test_tastes_are_drawn_around_the_segment_and_fixed_by_seed_and_customer() -> None:
    population = customers(1500)
    assert [c.tastes for c in population] == [c.tastes for c in customers(1500)]
    assert [c.tastes for c in population] != [c.tastes for c in customers(1500, seed=8)]
    # a customer's own generator: the same index and seed give the same departures from the segment
    assert population[2].tastes == draw_tastes(7, 2, population[2].segment)
    for segment in ("mass", "affluent"):
        members = [c for c in population if c.segment == segment]
        assert len(members) > 200
        for i, category in enumerate(TASTE_CATEGORIES):
            mean = statistics.fmean(c.tastes[i] for c in members)
            assert abs(mean - SEGMENT_TASTE[segment][category]) < 0.15, (segment, category, mean)


def test_responder_is_deterministic_per_prompt_and_answers_within_the_validity() -> None:
    responder = Responder(7, CATALOGUE)
    customer = customers(1)[0]
    start = parse_timestamp("2026-02-01T10:00:00Z")
    for n in range(300):
        prompt = prompt_for(customer.customer_id, "rm_call", start + n * 3600.0)
        response = responder.respond(prompt, customer, None)
        assert response == responder.respond(prompt, customer, None)
        labels = [a.label for a in response.answers]
        assert labels in ([], [DISMISSED], [ACCEPTED], [ACCEPTED, CONVERTED])
        times = [a.t_ms for a in response.answers]
        assert times == sorted(times)
        trigger_ms, expires_ms = round(parse_timestamp(prompt.event_ts) * 1000), round(
            parse_timestamp(prompt.expires_at) * 1000)
        # at least 5 % of the validity after the trigger, always before the prompt expires
        assert all(trigger_ms + 0.05 * (expires_ms - trigger_ms) <= t < expires_ms for t in times)
    other = Responder(8, CATALOGUE)
    outcomes = [(responder.respond(p, customer, None).answers, other.respond(p, customer, None).answers)
                for p in (prompt_for(customer.customer_id, "rm_call", start + n * 60.0) for n in range(50))]
    assert any(a != b for a, b in outcomes)


def test_answers_follow_the_latent_preferences() -> None:
    """Over many prompts, conversions happen as often as the tastes say, and an action the
    segment likes converts far more than one it dislikes."""
    responder = Responder(7, CATALOGUE)
    mass = [c for c in customers(1200) if c.segment == "mass"][:600]
    start = parse_timestamp("2026-02-01T10:00:00Z")
    rates = {}
    for action in ("offer_time_deposit", "send_research"):  # mass: deposits +1.0, research -1.5
        responses = [responder.respond(prompt_for(c.customer_id, action, start + k * 86400.0), c, None)
                     for c in mass for k in range(5)]
        converted = sum(r.converted for r in responses)
        expected = sum(r.probability for r in responses)
        assert abs(converted - expected) < 4 * expected ** 0.5 + 5, (action, converted, expected)
        accepted_only = sum(r.accepted and not r.converted for r in responses)
        expected_accepted = sum(min(0.95, 3 * r.probability) - r.probability for r in responses)
        assert abs(accepted_only - expected_accepted) < 4 * expected_accepted ** 0.5 + 5
        rates[action] = converted / len(responses)
    assert rates["offer_time_deposit"] > 3 * rates["send_research"]


def test_trigger_and_viewed_product_shift_the_probability() -> None:
    customer = customers(1)[0]
    deposit, reminder = CATALOGUE["offer_time_deposit"], CATALOGUE["maturity_reminder"]
    calm = conversion_probability(customer.tastes, 5, deposit, "product_view", None)
    assert conversion_probability(customer.tastes, 5, deposit, "product_view", "deposit") > calm
    assert conversion_probability(customer.tastes, 5, deposit, "churn_rising", None) < calm
    assert (conversion_probability(customer.tastes, 5, reminder, "maturity", None)
            > 3 * conversion_probability(customer.tastes, 5, reminder, "product_view", None))
    # a product far below the customer's grade is less welcome than one at it
    assert conversion_probability(customer.tastes, 1, deposit, "product_view", None) > calm


# -- the closed loop inside the simulation ------------------------------------------------------

def test_answers_join_the_stream_in_time_order_and_leave_the_rest_unchanged() -> None:
    config = SimulatorConfig(customers=40, days=20, seed=5)
    plain = list(generate(config))
    simulation = Simulation(config, with_truth=False, responder=Responder(5, CATALOGUE))
    looped: list[dict] = []
    prompts: dict[str, Prompt] = {}
    for event, _ in simulation.run():
        looped.append(event)
        if event["kind"] == "transaction" and len(prompts) < 60:  # answer a few "triggers"
            t = parse_timestamp(event["ts"])
            prompt = prompt_for(event["customer_id"], "rm_call", t, event_id=event["event_id"])
            prompts[prompt.prompt_id] = prompt
            simulation.answer(prompt)
    answers = [e for e in looped if e["kind"] == "feedback" and e["label"] in NBA_LABELS]
    assert [e for e in looped if e not in answers] == plain  # same events, same ids, same order
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(looped))
    assert len(answers) == sum(simulation.answers.values()) > 20
    assert simulation.late_answers == 0 and simulation.unknown_prompts == 0
    for answer in answers:
        event_from_obj(answer)  # valid under the contract
        prompt = prompts[answer["ref_prompt_id"]]
        assert answer["customer_id"] == prompt.customer_id
        assert prompt.event_ts < answer["ts"] < prompt.expires_at
    ids = [e["event_id"] for e in looped]
    assert len(ids) == len(set(ids))


def test_a_late_answer_comes_out_at_the_current_time_never_earlier() -> None:
    config = SimulatorConfig(customers=20, days=10, seed=3)
    simulation = Simulation(config, with_truth=False, responder=Responder(3, CATALOGUE))
    stream = simulation.run()
    events = [next(stream)[0] for _ in range(500)]  # about a week
    now = events[-1]["ts"]
    old, cid = parse_timestamp(events[100]["ts"]), events[100]["customer_id"]
    # a prompt of days ago (answered within 48 hours), one its customer does answer
    candidates = (prompt_for(cid, "rm_call", old, event_id=f"old-{k}") for k in range(100))
    prompt = next(p for p in candidates if (r := simulation.response(p)) is not None and r.answers)
    simulation.answer(prompt)
    simulation.answer(prompt_for("nobody", "rm_call", old))
    rest = [event for event, _ in stream]
    answers = [e for e in rest if e.get("ref_prompt_id") == prompt.prompt_id]
    assert answers and all(e["ts"] == now for e in answers)
    assert rest[: len(answers)] == answers  # before anything else still to come
    assert simulation.late_answers == len(answers) and simulation.unknown_prompts == 1


def test_simulated_files_are_unchanged_by_the_latent_preferences(tmp_path: Path) -> None:
    """``run.py simulate`` writes the same bytes as before customers had tastes (digests of
    this stream recorded before the change): the tastes take no draw from the simulation."""
    events, truth = tmp_path / "events.jsonl", tmp_path / "truth.jsonl"
    # Chat texts (extra events, simulator.voice) and the profiles' gender and city_tier (for the
    # fairness figures) came later and take no draw either: without them, the bytes are those
    # recorded before.
    write_jsonl(SimulatorConfig(customers=60, days=20, seed=7, fraud_rate=0.03, voice_texts=False), events, truth)
    lines = []
    for line in events.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["kind"] == "profile":
            assert event.pop("gender") in ("female", "male") and event.pop("city_tier") in ("1", "2")
        lines.append(orjson.dumps(event))
    assert hashlib.sha256(b"\n".join(lines) + b"\n").hexdigest() == \
        "532c4ecfb3701c32c52e2fecea1b9608ef1a83d16a19c199d75dd7f9d83a8085"
    assert hashlib.sha256(truth.read_bytes()).hexdigest() == \
        "6a0b39ac8fc7325c934468b871b59783d20f46762323f99667aed16047dfb458"
    config = SimulatorConfig(customers=60, days=20, seed=7)
    with_responder = Simulation(config, with_truth=False, responder=Responder(7, CATALOGUE))
    assert [orjson.dumps(e) for e, _ in with_responder.run()] == [orjson.dumps(e) for e in generate(config)]


# -- the closed loop through the engine ---------------------------------------------------------

def test_the_engine_learns_in_closed_loop_and_breaks_no_contact_rule() -> None:
    from bench.nba_loop import evaluate, run_policy

    settings = load_settings()
    results = evaluate(settings, SimulatorConfig(customers=250, days=120, seed=7), ["bandit", "random"])
    bandit, random_ = results
    assert sum(bandit.prompts) > 2000 and bandit.accepted > 300
    assert not bandit.violations and not random_.violations
    assert bandit.late_answers == 0
    learned = 2  # prompts from day 60 on
    assert bandit.expected_rate(learned) > 1.4 * random_.expected_rate(learned)
    assert bandit.rate(since=learned) > 1.3 * random_.rate(since=learned)
    # deterministic: the same loop twice gives the same prompts and answers
    small = SimulatorConfig(customers=60, days=30, seed=2)
    first, second = run_policy(settings, small, "bandit"), run_policy(settings, small, "bandit")
    assert first.outcomes == second.outcomes and first.actions == second.actions and sum(first.prompts) > 50


def test_live_simulator_mode_answers_prompts_and_the_bandit_learns() -> None:
    settings = load_settings()
    settings = replace(settings, simulator=replace(settings.simulator, customers=200, days=60, rate_per_s=10_000))
    events, loopback = simulator_input(settings)
    assert loopback is not None
    flow = demo_flow(settings, threading.Event(), events, loopback=loopback)
    out = io.StringIO()
    with redirect_stdout(out):
        run_main(flow)
    prompts = [line for line in out.getvalue().splitlines() if line.startswith("PROMPT")]
    assert len(prompts) > 300 and loopback.received == len(prompts) and loopback.unanswered == 0
    simulation = loopback.simulation
    assert simulation is not None
    answered: Counter[str] = simulation.answers
    assert answered[ACCEPTED] > 50 and answered[DISMISSED] > 50 and answered[CONVERTED] > 10
    # scores start at 0 (nothing learned) and are positive once accepted/converted answers came back
    scores = [float(match.group(1)) for line in prompts if (match := re.search(r" score=([0-9.]+) ", line))]
    assert scores[:5] == [0.0] * 5
    assert sum(score > 0 for score in scores[-100:]) > 50

    off = replace(settings, simulator=replace(settings.simulator, answer_prompts=False))
    assert simulator_input(off)[1] is None
