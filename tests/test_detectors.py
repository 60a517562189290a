"""Detectors on their own: windows, profile, rules, models; no Bytewax, Kafka or Redis."""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.counterparty import COUNTERPARTY_FEATURES, CounterpartyParams, CounterpartyRisk
from detectors.customer import CustomerModel
from detectors.fraud import FraudDetector, FraudParams
from detectors.profile import FEATURES, CustomerProfile, named
from detectors.rules import RuleParams, evaluate_rules
from detectors.supervised import FraudClassifier, SupervisedParams
from detectors.windows import SlidingWindows
from schemas.events import Event, parse_event

SPANS = (10.0, 100.0, 1000.0)
T = TypeVar("T")


def event(**fields: object) -> Event:
    base = {"event_id": "e", "customer_id": "c", "ts": "2026-01-01T00:00:00Z"}
    return parse_event(orjson.dumps({**base, **fields}))


def at(seconds: float) -> str:
    from schemas.outputs import format_ts
    return format_ts(1767225600.0 + seconds)  # 2026-01-01T00:00:00Z


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 1000)), min_size=1, max_size=300),
       st.integers(5, 400))
def test_sliding_windows_match_brute_force(steps: list[tuple[float, float]], capacity: int) -> None:
    windows = SlidingWindows(SPANS, max_items=capacity)
    t, history = 0.0, []
    for gap, value in steps:
        t += gap
        windows.add(t, value)
        history.append((t, value))
        kept = history[-capacity:]
        for i, span in enumerate(SPANS):
            inside = [v for (ts, v) in kept if ts > t - span]
            assert windows.count(i) == len(inside)
            assert abs(windows.total(i) - sum(inside)) < 1e-6 * (1 + sum(inside))
    restored = pickle.loads(pickle.dumps(windows))
    assert [restored.count(i) for i in range(3)] == [windows.count(i) for i in range(3)]


def test_features_describe_the_transaction_before_it_is_learned() -> None:
    profile = CustomerProfile()
    first = named(profile.observe_transaction(event(kind="transaction", amount=100, counterparty_id="m1",
                                                    ts=at(0))))
    again = named(profile.features(event(kind="transaction", amount=100, counterparty_id="m1", ts=at(60))))
    assert first["new_counterparty"] == 1.0 and first["hist_txns"] == 0.0 and first["cnt_1h"] == 0.0
    assert again["new_counterparty"] == 0.0 and again["cnt_1h"] > 0.0


def test_customer_state_stays_small_however_long_the_history() -> None:
    model = CustomerModel()
    rng = random.Random(1)
    for i in range(20_000):
        ts = at(i * 600.0)
        if i % 3:
            model.observe(event(kind="transaction", amount=rng.uniform(1, 500), ts=ts,
                                counterparty_id=f"m{rng.randrange(10_000)}", device_id=f"d{rng.randrange(50)}"))
        else:
            model.observe(event(kind="app", action=rng.choice(["login", "login_failed", "page_view"]), ts=ts,
                                device_id=f"d{rng.randrange(500)}"))
    size = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    assert size < 120_000, size  # 30 days of transactions at most, bounded "seen" sets


def test_takeover_sequence_hits_after_a_password_reset_from_a_new_device() -> None:
    model = CustomerModel()
    for day in range(10):
        model.observe(event(kind="transaction", amount=200, txn_type="transfer", counterparty_id="p1",
                            device_id="d1", ts=at(day * 86400.0)))
    model.observe(event(kind="app", action="password_reset", device_id="dX", ts=at(10 * 86400.0)))
    observation = model.observe(event(kind="transaction", amount=20_000, txn_type="transfer",
                                      counterparty_id="p999", device_id="dX", ts=at(10 * 86400.0 + 600)))
    codes = {hit.code for hit in observation.hits or []}
    assert {"takeover_sequence", "large_vs_history"} <= codes


def test_structuring_needs_several_deposits_just_under_the_threshold() -> None:
    model = CustomerModel()
    hits = []
    for i, amount in enumerate([48_000, 49_500, 47_200]):
        observation = model.observe(event(kind="transaction", amount=amount, txn_type="cash_deposit",
                                          direction="credit", ts=at(i * 3600.0)))
        hits.append({hit.code for hit in observation.hits or []})
    assert "structuring" not in hits[1] and "structuring" in hits[2]
    one_deposit = [1.0 if name == "near_threshold_cash_3d" else 0.0 for name in FEATURES]
    quiet = evaluate_rules(one_deposit, event(kind="transaction", amount=10), RuleParams())
    assert not quiet



def test_a_new_country_needs_a_history_to_be_new_against() -> None:
    """A card's first transactions abroad (or on a stream whose customers all live outside
    the configured home country) are not "unusual spend in a new country"; a country first
    seen after a history is."""
    model = CustomerModel()
    first = [model.observe(event(kind="transaction", amount=amount, counterparty_country="US",
                                 ts=at(i * 3600.0)))
             for i, amount in enumerate([900, 40, 35, 42])]
    assert all("unusual_foreign" not in {hit.code for hit in o.hits or []} for o in first)
    assert all(named(o.features)["new_country"] == 0.0 for o in first)
    later = model.observe(event(kind="transaction", amount=2_000, counterparty_country="BR",
                                ts=at(5 * 3600.0)))
    assert named(later.features)["new_country"] == 1.0
    assert "unusual_foreign" in {hit.code for hit in later.hits or []}

def test_counterparty_features_only_know_labels_that_arrived_before() -> None:
    risk = CounterpartyRisk()
    risk.observe_transaction("t1", 0.0)
    before = dict(zip(COUNTERPARTY_FEATURES, risk.features("t1", 3600.0), strict=True))
    risk.observe_label("t1", 7 * 86400.0, fraud=True)
    after = dict(zip(COUNTERPARTY_FEATURES, risk.features("t1", 7 * 86400.0 + 1), strict=True))
    assert before["cp_frauds_7d"] == 0.0 and after["cp_frauds_7d"] == 1.0
    assert after["cp_fraud_logodds"] > before["cp_fraud_logodds"]


def test_fraud_detector_learns_from_delayed_labels_and_scores_before_learning() -> None:
    detector = FraudDetector(FraudParams(warmup_frauds=5.0))
    rng = random.Random(7)
    labels: dict[int, bool] = {}
    scores: dict[bool, list[float]] = {True: [], False: []}
    delay = 144  # labels arrive a day (144 x 10 min) after their transaction
    for i in range(4000):
        t = i * 600.0
        bad = labels[i] = rng.random() < 0.05
        features = [(7.0 if bad else 4.0) if name == "log_amount" else 0.0 for name in FEATURES]
        cp = "evil" if bad else f"m{rng.randrange(200)}"
        detector.advance(t)  # the clock: what arrived before the last model tick is learned
        anomaly = detector.anomaly_scores([features])[0]
        scores[bad].append(detector.assess(f"e{i}", t, cp, features, [], anomaly).fraud_score)
        if i >= delay:
            assert detector.observe_label(f"e{i - delay}", t, labels[i - delay]) is not None
    late_bad, late_good = (s[len(s) // 2:] for s in (scores[True], scores[False]))
    assert sum(late_bad) / len(late_bad) > 0.5 > 0.1 > sum(late_good) / len(late_good)
    assert detector.classifier.n_frauds > 50 and detector.unmatched_labels == 0
    assert detector.observe_label("never-scored", 0.0, True) is None and detector.unmatched_labels == 1


def test_shared_detector_state_pickles() -> None:
    detector = FraudDetector()
    detector.assess("e1", 0.0, "m1", [0.0] * len(FEATURES), [], 0.0)
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.model_version == detector.model_version and len(clone.pending) == 1


def test_counterparty_fraud_episode_starts_with_a_run_of_frauds_and_ends_with_legit_labels() -> None:
    risk = CounterpartyRisk()
    day = 86400.0
    episode = COUNTERPARTY_FEATURES.index("cp_episode_days")
    assert risk.features("t1", 0.0)[episode] == 0.0
    for i in range(5):  # frauds from day 0 on, each labelled 7 days later
        risk.observe_label("t1", (7 + i) * day, fraud=True, txn_t=i * day)
    assert risk.features("t1", 12 * day)[episode] == 12.0  # the run began on day 0
    for i in range(12):  # then legitimate labels only
        risk.observe_label("t1", (12 + i) * day, fraud=False, txn_t=(5 + i) * day)
    assert risk.features("t1", 24 * day)[episode] == 0.0
    risk.observe_label("t1", 30 * day, fraud=True, txn_t=23 * day)  # a new run
    assert risk.features("t1", 31 * day)[episode] == 8.0


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(1, 90), min_size=1, max_size=30))
def test_batched_half_space_trees_score_exactly_as_rivers_one_by_one(seed: int, batches: list[int]) -> None:
    from river.anomaly import HalfSpaceTrees

    from detectors.anomaly import SQUASHED, AnomalyModel, AnomalyParams

    params = AnomalyParams(n_trees=3, height=4, window_size=25, seed=seed % 100)
    ours = AnomalyModel(params)
    river = HalfSpaceTrees(n_trees=params.n_trees, height=params.height, window_size=params.window_size,
                           seed=params.seed)
    rng = np.random.default_rng(seed)
    for size in batches:
        # Mostly typical rows near one corner, now and then an odd one; values in [0, 1].
        rows = np.clip(rng.normal(0.2, 0.1, (size, len(SQUASHED))), 0.0, 1.0)
        rows[rng.random(size) < 0.1] = rng.random(len(SQUASHED))
        expected = []
        for row in rows:
            x = dict(zip(SQUASHED, row.tolist(), strict=True))
            expected.append(float(river.score_one(x)))
            river.learn_one(x)
        assert ours.score_learn(rows).tolist() == pytest.approx(expected, abs=1e-12)


def test_a_transaction_older_than_the_last_one_is_scored_not_a_crash() -> None:
    """Live, one customer's events on different topics (or replayed after a restart) can
    arrive out of event-time order; the profile must take them."""
    model = CustomerModel()
    model.observe(event(kind="transaction", amount=100, ts=at(10 * 3600.0)))
    late = model.observe(event(kind="transaction", amount=100, ts=at(0.0)))
    assert late.features is not None and named(late.features)["hours_since_prev"] == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_classifier_learns_exactly_as_rivers_logistic_regression(optimizer: str) -> None:
    """The numpy classifier takes River's steps (log loss, fraud weight, L2, intercept rate,
    SGD or Adam) on the same standardised inputs: the same weights, label by label."""
    from river import linear_model, optim

    names = tuple(f"f{i}" for i in range(12))
    params = SupervisedParams(optimizer=optimizer, learning_rate=0.05, l2=1e-3, fraud_weight=3.0)  # type: ignore[arg-type]
    ours = FraudClassifier(names, params)
    river = linear_model.LogisticRegression(
        optimizer=optim.Adam(0.05) if optimizer == "adam" else optim.SGD(0.05),
        loss=optim.losses.Log(weight_pos=3.0), l2=1e-3, intercept_init=ours.intercept, intercept_lr=0.05)
    rng = random.Random(4)
    for i in range(400):
        v = ours.vector({name: rng.gauss(j % 3, 1 + j % 2) for j, name in enumerate(names)})
        fraud, weight = rng.random() < 0.2, rng.choice([1.0, 4.0])
        ours.learn_one(v, fraud, weight)
        z = dict(zip(names, ours._standardised(v).tolist(), strict=True))  # the inputs it learned on
        river.learn_one(z, fraud, weight)
        if i % 50 == 0:
            np.testing.assert_allclose(ours.weights, [river.weights.get(n, 0.0) for n in names], rtol=1e-9, atol=1e-12)
            assert ours.intercept == pytest.approx(river.intercept, rel=1e-9)
    x = ours.vector(dict.fromkeys(names, 1.5))
    assert ours.predict_proba_one(x) == pytest.approx(river.predict_proba_one(
        dict(zip(names, ours._standardised(x).tolist(), strict=True)))[True], rel=1e-9)


def test_counterparties_past_capacity_forget_the_least_recently_seen() -> None:
    risk = CounterpartyRisk(CounterpartyParams(capacity=32))
    for i in range(40):
        risk.observe_transaction(f"m{i}", float(i))
    risk.observe_label("m0", 100.0, fraud=True)  # seen again: recent
    for i in range(40, 80):
        risk.observe_transaction(f"m{i}", float(i))
    assert len(risk) <= 32
    assert risk.features("m0", 101.0)[COUNTERPARTY_FEATURES.index("cp_new")] == 0.0  # kept
    assert risk.features("m1", 101.0)[COUNTERPARTY_FEATURES.index("cp_new")] == 1.0  # forgotten
    assert risk.features("m79", 101.0)[COUNTERPARTY_FEATURES.index("cp_frauds_7d")] == 0.0
    clone = pickle.loads(pickle.dumps(risk))
    clone.observe_transaction("new", 200.0)
    assert len(clone) <= 32


def test_a_big_ticks_learning_is_spread_over_the_next_tick_in_bounded_slices() -> None:
    """Live at real pace an hour's tick holds millions of items; learned at once it would stop
    the worker. A lesson over ``tick_slice_items`` is learned in even slices at event times
    spread over the next tick, each at most the limit, and ends as the whole would."""
    hour, zero = 3600.0, [0.0] * len(FEATURES)
    sliced = FraudDetector(FraudParams(model_tick_s=hour, tick_slice_items=100))
    whole = FraudDetector(FraudParams(model_tick_s=hour, tick_slice_items=0))
    learned: list[int] = []
    learn_slice = sliced._learn_slice

    def spy(lesson) -> None:  # type: ignore[no-untyped-def]
        learned.append(len(lesson.part(lesson.traffic, lesson.done)) + len(lesson.part(lesson.labels, lesson.done)))
        learn_slice(lesson)

    sliced._learn_slice = spy  # type: ignore[method-assign]
    for detector in (sliced, whole):
        detector.advance(0.0)
        for i in range(450):  # tick 0: 450 transactions at 450 terminals, none labelled
            detector.assess(f"e{i}", i * 7.0, f"t{i}", zero, [], 0.0)
        for i in range(450, 900):  # tick 1: as many again, and labels for the first ones
            t = hour + (i - 450) * 7.0
            detector.advance(t)
            detector.assess(f"e{i}", t, f"t{i}", zero, [], 0.0)
            detector.observe_label(f"e{i - 450}", t, i % 10 == 0)
    cp_new = COUNTERPARTY_FEATURES.index("cp_new")
    # Tick 0's lesson (450 items) came in 5 slices, 720 s apart, all learned during tick 1.
    assert learned == [90] * 5 and sliced._lesson is None
    sliced.advance(2 * hour)
    whole.advance(2 * hour)
    # Tick 1's lesson (450 transactions and 450 labels): its first slice only, for now.
    assert learned[5:] == [100] and sliced.next_change == 2 * hour + hour / 9
    assert sliced.counterparties.features("t450", 2 * hour)[cp_new] == 0.0  # in the first slice
    assert sliced.counterparties.features("t899", 2 * hour)[cp_new] == 1.0  # in the last
    assert whole.counterparties.features("t899", 2 * hour)[cp_new] == 0.0
    del sliced._learn_slice  # the spy, while the state is pickled: a lesson in progress is state too
    clone = pickle.loads(pickle.dumps(sliced))
    assert clone._lesson is not None and clone.next_change == sliced.next_change
    sliced._learn_slice = spy  # type: ignore[method-assign]
    sliced.advance(3 * hour - 1)
    assert learned[5:] == [100] * 9 and sliced._lesson is None
    assert sliced.classifier.n_labels == whole.classifier.n_labels and sliced.classifier.n_frauds == 45
    assert len(sliced.evaluated) == len(whole.evaluated)
    for cp in ("t0", "t449", "t450", "t899"):
        np.testing.assert_allclose(sliced.counterparties.features(cp, 3 * hour),
                                   whole.counterparties.features(cp, 3 * hour), rtol=1e-9)
    clone.advance(3 * hour - 1)
    assert clone._lesson is None and clone.classifier.n_labels == sliced.classifier.n_labels
    assert clone.counterparties.features("t899", 3 * hour) == sliced.counterparties.features("t899", 3 * hour)


def pieces(items: list[T], sizes: list[int]) -> Iterator[list[T]]:
    """``items`` cut in consecutive pieces of ``sizes``, cycling through them."""
    start, sizes = 0, itertools.cycle(sizes)
    while start < len(items):
        size = next(sizes)
        yield items[start:start + size]
        start += size


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.floats(0, 3600)), min_size=1, max_size=200),
       st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_counterparty_traffic_in_batches_counts_as_one_by_one(sightings: list[tuple[int, float]],
                                                              cuts: list[int]) -> None:
    """A tick's traffic is counted at once, forgetting past capacity included, as the same
    transactions counted one at a time in order."""
    params = CounterpartyParams(capacity=32)
    batched, single = CounterpartyRisk(params), CounterpartyRisk(params)
    seen = [(f"m{cp}" if cp % 7 else None, t) for cp, t in sightings]
    for piece in pieces(seen, cuts):
        batched.observe_transactions(piece)
    for cp, t in seen:
        single.observe_transaction(cp, t)
    assert len(batched) == len(single) <= 32
    later = max(t for _, t in seen) + 1.0
    for cp in {cp for cp, _ in seen}:
        np.testing.assert_allclose(batched.features(cp, later), single.features(cp, later), rtol=1e-12)


@pytest.mark.parametrize("sighting", ["traffic", "labels"])
def test_a_counterparty_seen_earlier_in_the_batch_is_not_the_one_forgotten(sighting: str) -> None:
    risk = CounterpartyRisk(CounterpartyParams(capacity=32))
    risk.observe_transactions([(f"m{i}", float(i)) for i in range(32)])
    if sighting == "traffic":
        risk.observe_transactions([("m0", 100.0), ("new", 101.0)])  # at capacity: the two oldest go
    else:
        risk.observe_labels([("m0", 100.0, True, 50.0), ("new", 101.0, False, 60.0)])
    cp_new, frauds = COUNTERPARTY_FEATURES.index("cp_new"), COUNTERPARTY_FEATURES.index("cp_frauds_7d")
    assert risk.features("m0", 102.0)[cp_new] == 0.0  # seen at 100, a moment before
    assert risk.features("m1", 102.0)[cp_new] == risk.features("m2", 102.0)[cp_new] == 1.0
    assert risk.features("new", 102.0)[frauds] == 0.0 and risk.features("m0", 102.0)[frauds] == (
        1.0 if sighting == "labels" else 0.0)


def test_a_slice_whose_learning_raises_is_logged_and_the_clock_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    detector = FraudDetector(FraudParams(model_tick_s=3600.0, tick_slice_items=10))
    detector.advance(0.0)
    for i in range(40):
        detector.assess(f"e{i}", float(i), f"t{i}", [0.0] * len(FEATURES), [], 0.0)
    calls = []

    def broken(seen: list[tuple[str | None, float]]) -> None:
        calls.append(len(seen))
        if len(calls) == 2:
            raise ValueError("a broken table")

    detector.counterparties.observe_transactions = broken  # type: ignore[method-assign]
    detector.advance(3600.0)
    detector.advance(7199.0)
    assert calls == [10, 10, 10, 10] and detector.next_change == 7200.0
    assert [r.message for r in caplog.records] == [
        "learning slice 2 of 4 of the model tick ending at 3600.0 failed; the rest of that slice is not learned"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.floats(0, 3600), st.booleans(), st.floats(0, 600)),
                min_size=1, max_size=200),
       st.lists(st.integers(1, 50), min_size=1, max_size=20), st.sampled_from([32, 1000]))
def test_counterparty_labels_in_batches_learn_as_one_by_one(labels: list[tuple[int, float, bool, float]],
                                                            cuts: list[int], capacity: int) -> None:
    """A tick's labels are learned at once (each counterparty's row read and written once) as
    the same labels one at a time in order: counts, rates, fraud runs, forgetting."""
    params = CounterpartyParams(capacity=capacity)
    batched, single = CounterpartyRisk(params), CounterpartyRisk(params)
    stream = [(f"m{cp}" if cp % 7 else None, known_at, fraud, known_at - ago)
              for cp, known_at, fraud, ago in sorted(labels, key=lambda label: label[1])]
    for piece in pieces(stream, cuts):
        batched.observe_labels(piece)
    for cp, known_at, fraud, txn_t in stream:
        single.observe_label(cp, known_at, fraud, txn_t)
    assert len(batched) == len(single) <= capacity
    later = stream[-1][1] + 1.0
    for cp in {cp for cp, _, _, _ in stream}:
        assert batched.features(cp, later) == single.features(cp, later)
