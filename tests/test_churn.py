"""Churn detector: score shape, signals, labels, alert cooldown, pickling, determinism, and
the bounded fit of the priors."""

from __future__ import annotations

import importlib.util
import logging
import pickle
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import optimize

from bench.metrics import roc_auc
from detectors import bgnbd
from detectors.bgnbd import BGNBD, bgnbd_loglik, fit_bgnbd
from detectors.churn import DAY, SIGNALS, ChurnModel, ChurnParams, ChurnState, Rhythm, fit_priors, prior_score
from detectors.customer import CustomerModel, CustomerView, ViewParams
from schemas.events import parse_event
from simulator import SimulatorConfig, write_jsonl
from tests.conftest import replay

P = ChurnParams()


def regular(every_days: float, until_days: float, amount: float = 50.0) -> ChurnState:
    state = ChurnState()
    t = 0.0
    while t <= until_days:
        state.observe_activity(t * DAY, amount, P)
        state.evidence(t * DAY, P)  # as the engine asks after each event
        t += every_days
    return state


def test_silence_is_judged_against_the_customers_own_rhythm() -> None:
    daily, monthly = regular(1, 180), regular(30, 180)
    now = 200 * DAY  # 20 days after both last acted
    assert daily.score(now, P) > 0.99
    assert monthly.score(now, P) < daily.score(now, P)
    assert monthly.score(181 * DAY, P) < monthly.score(now, P)


def test_exit_signals_raise_the_score_and_decay() -> None:
    state = regular(3, 90)
    before = state.score(90 * DAY, P)
    for action in ("complaint", "account_close_view", "transfer_out_view", "unsubscribe"):
        state.observe_signal(action, 90 * DAY, P)
    after = state.score(90 * DAY, P)
    assert after > before
    state.observe_signal("page_view", 90 * DAY, P)
    assert state.score(90 * DAY, P) == after
    forgotten = regular(3, 90)
    forgotten.observe_signal("account_close_view", 0.0, P)
    assert forgotten.score(90 * DAY, P) < after


def test_draining_the_balance_is_an_exit_signal() -> None:
    state = regular(2, 60)
    state.observe_balance(10_000.0)
    before = state.score(60 * DAY, P)
    state.observe_outflow(60 * DAY, 9_000.0, 1_000.0, P)
    assert state.score(60 * DAY, P) > before


def test_labels_pin_or_forgive() -> None:
    state = regular(2, 60)
    state.observe_signal("account_close_view", 60 * DAY, P)
    signalled = state.score(60 * DAY, P)
    state.observe_label("retained", 60 * DAY, P)
    assert state.score(60 * DAY, P) < signalled
    state.observe_label("churned", 60 * DAY, P)
    assert state.score(60 * DAY, P) == 1.0


def test_state_is_small_and_picklable() -> None:
    state = regular(1, 365)
    state.observe_signal("complaint", 365 * DAY, P)
    for day in range(0, 365, 3):
        state.evidence(day * DAY, P)  # as the engine asks, keeping weekly snapshots
    copy = pickle.loads(pickle.dumps(state))
    assert copy.score(400 * DAY, P) == state.score(400 * DAY, P)
    assert len(state.history) <= P.horizon_days / 7 + 2
    assert len(pickle.dumps(state)) < 2000


def _txn(i: int, day: float) -> bytes:
    ts = f"2026-01-{1 + int(day):02d}T10:00:00Z"
    return (b'{"kind":"transaction","event_id":"e%d","customer_id":"c","ts":"%s","amount":20}'
            % (i, ts.encode()))


def _alert_due(model: CustomerModel, view: CustomerView, params: ViewParams, raw: bytes | None = None,
               now: float | None = None) -> tuple[float, list] | None:
    """Feed one event (or just move the clock to ``now``) and ask the view for a churn alert."""
    evidence = model.observe(parse_event(raw)).churn if raw is not None else None
    if now is not None:
        evidence, _ = model.churn_evidence(now)
    if evidence is None:
        return None  # the event changed nothing churn is made of
    return view.churn_alert_due(prior_score(evidence), evidence, params)


def test_churn_alert_cooldown_and_escalation() -> None:
    params = ViewParams(churn_threshold=0.3, churn_cooldown_days=30.0, churn_escalation=0.1,
                        churn_min_active_days=3)
    model, view = CustomerModel(), CustomerView()
    for i in range(10):
        due = _alert_due(model, view, params, _txn(i, i))
    assert due is None  # active: no alert
    t0 = 1767261600.0 + 30 * DAY  # 2026-01-31T10:00Z, three weeks after the last transaction
    first = _alert_due(model, view, params, b'{"kind":"app","event_id":"a1","customer_id":"c",'
                       b'"ts":"2026-01-31T10:05:00Z","action":"account_close_view"}')
    assert first is not None and first[0] >= 0.3
    assert any(r.code == "churn_exit_signals" and "account-closing" in r.text for r in first[1])
    assert _alert_due(model, view, params, now=t0 + 600) is None  # cooldown
    escalated = _alert_due(model, view, params, b'{"kind":"app","event_id":"a2","customer_id":"c",'
                           b'"ts":"2026-01-31T10:06:00Z","action":"complaint"}')
    assert escalated is not None and escalated[0] >= first[0] + 0.1
    assert _alert_due(model, view, params, now=t0 + 31 * DAY) is None  # cooldown over, no new crossing
    fresh_model, fresh = CustomerModel(), CustomerView()
    for i in range(10):
        _alert_due(fresh_model, fresh, params, _txn(i, i))
    assert _alert_due(fresh_model, fresh, params, now=9 * DAY + 1767261600.0) is None
    assert _alert_due(fresh_model, fresh, params, now=t0 + 31 * DAY) is not None  # crossed from below


def test_evidence_is_handed_on_only_when_the_event_changed_it() -> None:
    model = CustomerModel()
    observed = [model.observe(parse_event(raw)).churn is not None for raw in (
        _txn(0, 0), _txn(1, 1),  # the first event has nothing to compare with; a new day
        b'{"kind":"transaction","event_id":"e2","customer_id":"c","ts":"2026-01-02T18:00:00Z","amount":5}',
        b'{"kind":"app","event_id":"a1","customer_id":"c","ts":"2026-01-02T19:00:00Z","action":"page_view"}',
        b'{"kind":"app","event_id":"a2","customer_id":"c","ts":"2026-01-02T19:01:00Z","action":"complaint"}',
        b'{"kind":"feedback","event_id":"f1","customer_id":"c","ts":"2026-01-02T20:00:00Z","label":"retained"}',
        b'{"kind":"app","event_id":"a3","customer_id":"c","ts":"2026-01-03T08:00:00Z","action":"login"}')]
    assert observed == [False, True, False, False, True, True, True]


def test_a_label_teaches_the_evidence_of_one_horizon_before() -> None:
    state = regular(1, 120)
    label_t = 150 * DAY
    evidence = state.observe_label("churned", label_t, P)
    assert evidence is not None and evidence.t <= label_t - P.horizon_days * DAY
    assert label_t - evidence.t < P.horizon_days * DAY + 8 * DAY  # the latest such snapshot
    assert state.score(label_t, P) == 1.0


def _customer(rng: np.random.Generator, leaves: bool, days: int = 120) -> ChurnState:
    """A daily customer. In this population a leaver looks at the transfer-out page (a signal
    the prior weighs lightly) in the last month, and complaints (weighed heavily by the prior)
    say nothing: half the stayers have made one."""
    state = ChurnState()
    signal = "transfer_out_view" if leaves else ("complaint" if rng.random() < 0.5 else None)
    signal_day = days - int(rng.integers(1, 30))
    for day in range(days):
        t = day * DAY + rng.uniform(0, 3600)
        state.observe_activity(t, 50.0, P)
        if signal and day == signal_day:
            state.observe_signal(signal, t + 600, P)
    return state


def test_the_shared_model_learns_what_labels_say() -> None:
    params = ChurnParams(min_labels=20)
    rng = np.random.default_rng(3)
    model = ChurnModel()
    for round_ in range(2):
        labels, prior, learned = [], [], []
        for i in range(600):
            leaves = bool(i % 3 == 0)
            evidence = _customer(rng, leaves).evidence(120 * DAY, params)
            labels.append(int(leaves))
            prior.append(prior_score(evidence))
            learned.append(model.score(evidence, params))  # score before learn
            model.learn(evidence, leaves, params)
        if round_ == 1:
            assert roc_auc(labels, prior) < 0.7 < 0.9 < roc_auc(labels, learned)
    # The weights: bias, the prior's log-odds, then one per signal.
    complaint, transfer_out = (2 + SIGNALS.index(name) for name in ("complaint", "transfer_out_view"))
    assert model.weights[transfer_out] > 0.5 and model.weights[complaint] < 0 and model.n == 1200
    restored = pickle.loads(pickle.dumps(model))
    assert restored.weights == model.weights and restored.n == model.n


def test_priors_fitted_to_a_history_and_the_rhythm_rescored_with_them() -> None:
    rng = np.random.default_rng(4)
    states, now = [], 200 * DAY
    for _ in range(1500):  # BG/NBD customers: r = 0.5, alpha = 10 days, a = 1, b = 3
        state, rate, p_leave, t = ChurnState(), rng.gamma(0.5, 1 / 10.0), rng.beta(1.0, 3.0), 0.0
        while t < 200:
            state.observe_activity(t * DAY, 20.0, P)
            if state.x and rng.random() < p_leave:
                break
            t += max(1.0, rng.exponential(1 / rate))
        states.append(state)
    rhythms = [s.history_summary(now) for s in states]
    assert all(r is not None for r in rhythms)
    fitted = fit_priors(rhythms, P)  # type: ignore[arg-type]
    assert abs(fitted.r - 0.5) < 0.2 and 5.0 < fitted.alpha_days < 20.0
    state, rhythm = states[0], rhythms[0]
    assert rhythm is not None
    assert rhythm.requiet(state.evidence(now, P), fitted).quiet == state.evidence(now, fitted).quiet


def test_bgnbd_fit_recovers_its_parameters() -> None:
    rng = np.random.default_rng(1)
    n, T = 3000, 40.0
    lam = rng.gamma(0.5, 1 / 2.0, n)  # r = 0.5, alpha = 2
    p = rng.beta(1.0, 3.0, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T:
                break
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < p[i]:
                break
    model = fit_bgnbd(x, t_x, np.full(n, T))
    assert abs(model.r - 0.5) < 0.15 and abs(model.alpha - 2.0) < 0.8
    assert bgnbd_loglik(np.log([model.r, model.alpha, model.a, model.b]), x, t_x, np.full(n, T)) > \
        bgnbd_loglik(np.log([2.0, 1.0, 3.0, 1.0]), x, t_x, np.full(n, T))
    expected = BGNBD(0.5, 2.0, 2.0, 3.0).expected(10.0, np.array([0.0, 5.0]), np.array([0.0, 39.0]),
                                                  np.array([40.0, 40.0]))
    assert expected[1] > expected[0] > 0


def test_churn_alerts_and_scores_replay_identically_with_one_and_two_workers(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(SimulatorConfig(customers=150, days=45, seed=5, fraud_rate=0.0, churn_rate=0.3), events)
    one = replay(events, tmp_path / "w1", workers=1)
    two = replay(events, tmp_path / "w2", workers=2)
    churn_alerts = [a for a in one.records("alerts") if a["type"] == "churn_risk"]
    assert churn_alerts and all(a["reasons"] for a in churn_alerts)
    assert sorted(one.raw("alerts").splitlines()) == sorted(two.raw("alerts").splitlines())
    assert sorted(one.raw("state").splitlines()) == sorted(two.raw("state").splitlines())
    churned = {e["customer_id"] for e in map(orjson.loads, events.read_bytes().splitlines())
               if e["kind"] == "feedback" and e["label"] == "churned"}
    states = one.records("state")
    labels = [1 if s["customer_id"] in churned else 0 for s in states]
    assert churned and roc_auc(labels, [s["churn_score"] for s in states]) > 0.85


# --- the fit of the priors is bounded, whatever the data -------------------------------------

def _bounded_fit(rhythms: Sequence[Rhythm], cpu_seconds: float = 1.0) -> ChurnParams:
    """``fit_priors`` on ``rhythms``, checked: no warning, every parameter within its bounds,
    and less than ``cpu_seconds`` of CPU."""
    started = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit_priors(rhythms, P)
    assert time.process_time() - started < cpu_seconds
    low, high = bgnbd.SHAPE_BOUNDS
    assert all(low <= v <= high for v in (fitted.r, fitted.a, fitted.b))
    span = max((h.age for h in rhythms), default=0.0) or 1.0
    assert bgnbd.ALPHA_SPAN_BOUNDS[0] * span <= fitted.alpha_days <= bgnbd.ALPHA_SPAN_BOUNDS[1] * span
    return fitted


def _card_rhythms(customers: int, days: int, seed: int) -> list[Rhythm]:
    """Card payments as ``bench.cardsim`` draws them: each customer a steady Poisson count a
    day (mean U(0, 4)), nobody leaving; their rhythms in active days at the end."""
    rng = np.random.default_rng(seed)
    rhythms = []
    for rate in rng.uniform(0.0, 4.0, customers):
        active = np.flatnonzero(rng.poisson(rate, days))
        if len(active):
            first, last = float(active[0]), float(active[-1])
            rhythms.append(Rhythm(len(active) - 1, last - first, days - 0.5 - first, 50.0))
    return rhythms


@pytest.mark.parametrize(("customers", "days", "seed"), [(2000, 60, 0), (500, 30, 1)])
def test_prior_fit_on_card_payments_is_bounded(customers: int, days: int, seed: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # Unbounded, these ran away: b = 4e14, and r = 8e8 after 4 s.
    caplog.set_level(logging.INFO, logger="detectors.churn")
    fitted = _bounded_fit(_card_rhythms(customers, days, seed))
    assert 0.5 < fitted.r / fitted.alpha_days < 2.0  # the mean rate of active days, about 1.1
    assert any("customers" in m and "evaluations" in m for m in caplog.messages)


def test_steady_buyers_are_the_poisson_limit_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="detectors.churn")
    steady = [Rhythm(20, 40.0 + i % 3, 42.0 + i % 5, 30.0) for i in range(400)]  # every other day
    fitted = _bounded_fit(steady)
    assert fitted.r == bgnbd.SHAPE_BOUNDS[1] and abs(fitted.r / fitted.alpha_days - 0.5) < 0.05
    assert any("r at its upper bound 1000" in m and "Poisson limit" in m for m in caplog.messages)


def test_prior_fit_on_the_simulators_stream_is_bounded(sim_stream: tuple[Path, Path]) -> None:
    events, _ = sim_stream
    models: dict[str, CustomerModel] = {}
    now = 0.0
    for raw in events.read_bytes().splitlines():
        event = parse_event(raw)
        models.setdefault(event.customer_id, CustomerModel()).observe(event)
        now = max(now, event.t)
    rhythms = [r for m in models.values() if (r := m.churn_evidence(now)[1]) is not None]
    fitted = _bounded_fit(rhythms)  # unbounded: r = 1e9 after 3 s
    assert 0.2 < fitted.r / fitted.alpha_days < 2.0


@pytest.mark.skipif(importlib.util.find_spec("lifetimes") is None, reason="CDNOW comes with lifetimes (dev)")
def test_prior_fit_on_cdnow_is_the_optimum_in_a_fraction_of_a_second() -> None:
    from bench.churn_holdout import cdnow_events, cdnow_path, rfm
    from schemas.events import parse_timestamp

    cutoff = parse_timestamp("1997-10-01T00:00:00Z")
    history = [e for e in cdnow_events(cdnow_path()) if parse_timestamp(e["ts"]) < cutoff]
    weeks = rfm(history, max(parse_timestamp(e["ts"]) for e in history))
    rhythms = [Rhythm(x, 7 * t_x, 7 * T, 0.0) for x, t_x, T in weeks.values()]
    fitted = _bounded_fit(rhythms, cpu_seconds=0.5)  # the former Nelder-Mead fit took 6-9 s
    assert len(rhythms) == 23570
    assert np.allclose([fitted.r, fitted.alpha_days, fitted.a, fitted.b], [0.2511, 33.44, 0.7346, 2.188],
                       rtol=1e-3)


@pytest.mark.parametrize("rhythms", [
    [Rhythm(10, 50.0, 60.0, 20.0)] * 300,  # all customers identical
    [Rhythm(0, 0.0, float(i % 60), 20.0) for i in range(300)],  # one purchase each
    [Rhythm(0, 0.0, 0.0, 0.0)] * 300,  # no time to buy again
    [Rhythm(3, 20.0, 30.0, 20.0)],  # a single customer
    [],
], ids=["identical", "one-purchase-each", "no-time", "single-customer", "no-customers"])
def test_prior_fit_on_degenerate_histories_is_bounded(rhythms: list[Rhythm]) -> None:
    # Unbounded: r and alpha of 1e9 and b of 1e6 (identical, single), alpha of 2e19 (one each).
    fitted = _bounded_fit(rhythms, cpu_seconds=0.5)
    if not rhythms or all(h.age == 0 for h in rhythms):  # nothing to learn from: the configured priors
        assert (fitted.r, fitted.alpha_days, fitted.a, fitted.b) == pytest.approx((P.r, P.alpha_days, P.a, P.b))


def test_loglik_gradient_is_the_derivative() -> None:
    rng = np.random.default_rng(2)
    x = rng.poisson(3.0, 200).astype(float)
    T = rng.uniform(10.0, 60.0, 200).round()
    t_x = np.where(x > 0, (T * rng.uniform(0.2, 1.0, 200)).round(), 0.0)
    h = bgnbd._rhythms(x, t_x, T, 1000, span=None)
    for point in ([0.5, 0.3, 0.8, 2.5], [1e3, 1e4, 1e-3, 1e3], [1e-3, 1e-3, 1e3, 1e-3]):
        theta = np.log(point)
        numeric = optimize.approx_fprime(theta, lambda p: bgnbd._loglik(p, h)[0], 1e-7)
        assert np.allclose(bgnbd._loglik(theta, h)[1], numeric, rtol=1e-4, atol=1e-3)


def test_prior_fit_sample_is_deterministic_and_close_to_the_full_fit() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    T = rng.integers(1, 366, n).astype(float)
    x = rng.poisson(rng.gamma(0.5, 0.1, n) * T).astype(float)
    t_x = np.where(x > 0, np.minimum(T, (T * rng.beta(np.maximum(x, 1.0), 1.0)).round()), 0.0)
    full = fit_bgnbd(x, t_x, T)
    sample = fit_bgnbd(x, t_x, T, max_rhythms=2000)
    order = rng.permutation(n)
    assert sample == fit_bgnbd(x[order], t_x[order], T[order], max_rhythms=2000)  # whatever the order
    assert full.rhythms > 2000 >= sample.rhythms and sample.customers == n
    assert abs(sample.r - full.r) < 0.1 * full.r and abs(sample.alpha - full.alpha) < 0.2 * full.alpha


def test_prior_fit_stops_at_its_budget_with_the_best_point_found() -> None:
    rhythms = _card_rhythms(300, 60, 3)
    x, t_x, T = (np.array([getattr(h, name) for h in rhythms], dtype=float) for name in ("x", "recency", "age"))
    stopped = fit_bgnbd(x, t_x, T, max_evaluations=3)
    assert not stopped.converged and stopped.evaluations == 3
    assert np.isfinite([stopped.r, stopped.alpha, stopped.a, stopped.b]).all()
    assert fit_bgnbd(x, t_x, T).evaluations <= bgnbd.MAX_EVALUATIONS
