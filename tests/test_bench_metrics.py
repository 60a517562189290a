"""Benchmark tooling: the metrics against hand-computed values and brute force, the card
simulator against the handbook's generator, and the card benchmark's helpers."""

from __future__ import annotations

import gzip
import itertools
import math
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.card_benchmark import OnlineReference, Truth, handbook_test_mask, load_truth, week_ranges
from bench.cardsim import (
    DAY_S,
    SimConfig,
    customer_profiles,
    customer_transactions,
    generate_transactions,
    simulate,
    terminal_locations,
    terminals_within_radius,
    write_events,
    write_truth,
)
from bench.metrics import (
    average_precision,
    average_ranks,
    card_precision_at_k,
    card_precision_by_day,
    precision_recall_at_threshold,
    roc_auc,
)

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


# -- metrics: hand-computed examples --------------------------------------------------------


def test_roc_auc_hand_computed() -> None:
    # 3 of the 4 (fraud, legit) pairs are ordered correctly.
    assert roc_auc(LABELS, SCORES) == pytest.approx(0.75)
    assert roc_auc([True, False, True], [0.9, 0.5, 0.1]) == pytest.approx(0.5)


def test_roc_auc_ties_count_half() -> None:
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5
    # pairs: (0.5 vs 0.5) half, (0.5 vs 0.2) win, (0.9 vs 0.5) win, (0.9 vs 0.2) win -> 3.5 / 4
    assert roc_auc([0, 0, 1, 1], [0.5, 0.2, 0.5, 0.9]) == pytest.approx(0.875)


def test_average_precision_hand_computed() -> None:
    # descending: 0.8 (fraud) P=1 R=1/2; 0.4 (legit); 0.35 (fraud) P=2/3 R=1 -> 1/2 + 1/3
    assert average_precision(LABELS, SCORES) == pytest.approx(0.8333, abs=1e-4)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert average_precision([0, 1, 1], [0.9, 0.8, 0.1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_average_precision_groups_ties() -> None:
    # a single threshold: precision = prevalence at recall 1
    assert average_precision([1, 0, 0, 0], [0.5] * 4) == pytest.approx(0.25)
    # 0.9 (legit) P=0; tie at 0.5 (fraud, legit) P=1/3 R=1
    assert average_precision([0, 1, 0], [0.9, 0.5, 0.5]) == pytest.approx(1 / 3)


def test_precision_recall_at_threshold() -> None:
    assert precision_recall_at_threshold(LABELS, SCORES, 0.35) == pytest.approx((2 / 3, 1.0))
    assert precision_recall_at_threshold(LABELS, SCORES, 0.5) == pytest.approx((1.0, 0.5))
    assert precision_recall_at_threshold(LABELS, SCORES, 0.0) == pytest.approx((0.5, 1.0))
    assert precision_recall_at_threshold(LABELS, SCORES, 0.9) == (0.0, 0.0)


def test_undefined_metrics_are_nan() -> None:
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert math.isnan(roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert math.isnan(card_precision_at_k([], k=10))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        average_precision([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError):
        card_precision_by_day([0], [0], [0.5], [True], k=0)


def test_average_ranks() -> None:
    assert average_ranks([3.0, 1.0, 3.0, 3.0, 0.0]).tolist() == [4.0, 2.0, 4.0, 4.0, 1.0]


# -- metrics: brute force on random data with ties ------------------------------------------


def _brute_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _brute_ap(labels: list[int], scores: list[float]) -> float:
    n_pos = sum(labels)
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        flagged = [y for y, s in zip(labels, scores, strict=True) if s >= threshold]
        recall = sum(flagged) / n_pos
        total += (recall - previous_recall) * sum(flagged) / len(flagged)
        previous_recall = recall
    return total


@pytest.mark.parametrize("seed", range(20))
def test_metrics_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    labels = [rng.random() < 0.3 for _ in range(n)]
    labels[0], labels[1] = True, False
    scores = [rng.choice([0.0, 0.1, 0.25, 0.5, 0.9, rng.random()]) for _ in range(n)]
    y = [int(v) for v in labels]
    assert roc_auc(labels, scores) == pytest.approx(_brute_auc(y, scores))
    assert average_precision(labels, scores) == pytest.approx(_brute_ap(y, scores))


# -- card precision@k -----------------------------------------------------------------------


def test_card_precision_hand_computed() -> None:
    rows = [
        # day 1: a max 0.9, fraud via its second transaction; b 0.5 legit; c 0.1 fraud
        ("2018-04-01", "a", 0.9, False), ("2018-04-01", "a", 0.2, True),
        ("2018-04-01", "b", 0.5, False), ("2018-04-01", "c", 0.1, True),
        # day 2: b 0.8 fraud, c 0.7 fraud, a 0.3 legit
        ("2018-04-02", "a", 0.3, False), ("2018-04-02", "b", 0.8, True), ("2018-04-02", "c", 0.7, True),
    ]
    # top-2: day 1 {a, b} -> 1/2; day 2 {b, c} -> 2/2
    assert card_precision_at_k(rows, k=2) == pytest.approx(0.75)
    # top-1: day 1 a -> 1; day 2 b -> 1
    assert card_precision_at_k(rows, k=1) == pytest.approx(1.0)
    # top-3 covers everyone: day 1 2/3, day 2 2/3
    assert card_precision_at_k(rows, k=3) == pytest.approx(2 / 3)


def test_card_precision_divides_by_k_like_the_handbook() -> None:
    rows = [("d", "a", 0.9, True), ("d", "b", 0.1, False)]
    assert card_precision_at_k(rows, k=100) == pytest.approx(0.01)


def test_card_precision_same_card_on_two_days_counts_per_day() -> None:
    by_day = card_precision_by_day([5, 5, 6], [1, 2, 1], [0.9, 0.1, 0.9], [True, False, False], k=1)
    assert by_day == [(5, 1.0), (6, 0.0)]


# -- the card simulator ---------------------------------------------------------------------


def test_profiles_match_the_handbook_sequence() -> None:
    profiles = customer_profiles(50, seed=0)
    rs = np.random.RandomState(0)
    for c in range(50):
        expected = [rs.uniform(0, 100), rs.uniform(0, 100), rs.uniform(5, 100), rs.uniform(0, 4)]
        got = [profiles.x[c], profiles.y[c], profiles.mean_amount[c], profiles.mean_nb_tx_per_day[c]]
        assert got == expected
        assert profiles.std_amount[c] == expected[2] / 2
    # the handbook's printed first customer: 54.881350 71.518937 62.262521 31.131260 2.179533
    assert profiles.x[0] == pytest.approx(54.881350, abs=1e-6)
    assert profiles.mean_nb_tx_per_day[0] == pytest.approx(2.179533, abs=1e-6)


def test_first_transactions_of_the_handbook_dataset() -> None:
    # Customer 2's first transaction is TRANSACTION_ID 2 of the handbook's dataset:
    # 2018-04-01 00:07:56, terminal 1365, amount 146.00 (10000 terminals, r = 5).
    profiles = customer_profiles(3)
    available = terminals_within_radius(profiles, terminal_locations(10000, 1), 5.0)
    seconds, amounts, terminals = customer_transactions(
        2, float(profiles.mean_amount[2]), float(profiles.std_amount[2]),
        float(profiles.mean_nb_tx_per_day[2]), available[2], days=1)
    assert (seconds[0], round(amounts[0], 2), terminals[0]) == (7 * 60 + 56, 146.0, 1365)


SMALL = SimConfig(customers=100, terminals=200, days=30, seed=0)


def test_simulation_is_deterministic_and_consistent() -> None:
    a, b = simulate(SMALL), simulate(SMALL)
    for field in ("seconds", "customer", "terminal", "amount", "fraud", "scenario"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert len(a) > 1000
    assert np.all(np.diff(a.seconds) >= 0)
    assert np.array_equal(a.day, a.seconds // DAY_S)
    assert np.array_equal(a.fraud, a.scenario > 0)
    assert np.all(a.amount[a.scenario == 1] > 220)
    assert set(np.unique(a.scenario).tolist()) == {0, 1, 2, 3}
    genuine = generate_transactions(SMALL)
    x5 = a.scenario == 3
    # x5, or x25 for a transaction picked again by an overlapping compromise (as in the handbook)
    ratio = a.amount[x5] / genuine.amount[x5]
    assert np.all(np.isclose(ratio, 5) | np.isclose(ratio, 25) | np.isclose(ratio, 125))
    assert np.array_equal(a.amount[~x5], genuine.amount[~x5])
    other = simulate(SimConfig(customers=100, terminals=200, days=30, seed=1))
    assert len(other) != len(a) or not np.array_equal(other.amount, a.amount)


def test_events_and_truth_files(tmp_path: Path) -> None:
    tx = simulate(SMALL)
    events, truth_csv = tmp_path / "events.jsonl.gz", tmp_path / "truth.csv"
    assert write_events(tx, SMALL, events, chunk=777) == 2 * len(tx)
    write_truth(tx, SMALL, truth_csv, chunk=500)
    with gzip.open(events, "rb") as handle:
        objs = [orjson.loads(line) for line in handle]
    assert len(objs) == 2 * len(tx)
    times = [datetime.fromisoformat(o["ts"]).timestamp() for o in objs]
    assert times == sorted(times)
    for (t0, o0), (t1, o1) in itertools.pairwise(zip(times, objs, strict=True)):
        assert not (t0 == t1 and o0["kind"] == "feedback" and o1["kind"] == "transaction")
    txs = {o["event_id"]: (t, o) for t, o in zip(times, objs, strict=True) if o["kind"] == "transaction"}
    fbs = [(t, o) for t, o in zip(times, objs, strict=True) if o["kind"] == "feedback"]
    assert len(txs) == len(fbs) == len(tx)
    for t, fb in fbs:
        t_tx, tx_obj = txs[fb["ref_event_id"]]
        assert t - t_tx == 604800
        assert fb["customer_id"] == tx_obj["customer_id"]
        assert fb["event_id"] == "fb" + fb["ref_event_id"][2:]
    first = objs[0]
    assert set(first) == {"kind", "event_id", "ts", "customer_id", "counterparty_id", "amount",
                          "txn_type", "channel"}
    assert first["ts"].endswith(".000Z") and first["ts"].startswith("2018-04-01T")
    truth = load_truth(truth_csv)
    assert np.array_equal(truth.fraud, tx.fraud) and np.array_equal(truth.scenario, tx.scenario)
    assert np.array_equal(truth.customer, tx.customer) and np.array_equal(truth.day, tx.day)
    labels = {fb["ref_event_id"]: fb["label"] == "fraud" for _, fb in fbs}
    assert [labels[f"tx{i}"] for i in range(len(tx))] == tx.fraud.tolist()


# -- card benchmark helpers -----------------------------------------------------------------


def test_week_ranges_cover_the_run_aligned_on_the_test_week() -> None:
    assert week_ranges(120, 113)[-1] == (113, 120)
    assert week_ranges(120, 113)[0] == (0, 1)
    assert week_ranges(183, 129)[-1] == (178, 183)
    ranges = week_ranges(40, 33)
    assert ranges[0][0] == 0 and ranges[-1][1] == 40
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_handbook_test_mask_removes_known_compromised_cards() -> None:
    # test week starts on day 14 (train 0-6, delay 7-13); customer 1 defrauded on day 3,
    # customer 2 on day 9 (known from test day 17 on), customer 3 on day 15 (too recent).
    truth = Truth(customer=np.array([1, 2, 3, 1, 2, 2, 3, 4]), day=np.array([3, 9, 15, 14, 14, 17, 20, 16]),
                  fraud=np.array([True, True, True, False, False, False, False, False]),
                  scenario=np.array([2, 2, 2, 0, 0, 0, 0, 0], dtype=np.int8))
    mask = handbook_test_mask(truth, test_start=14)
    assert mask.tolist() == [False, False, True, False, True, False, True, True]


def test_online_reference_learns_from_feedback_only() -> None:
    model = OnlineReference(4)
    before = model.score(0, 0.0, customer=1, terminal=7, amount=50.0)
    model.learn(0, 1.0, fraud=True)
    after = model.score(1, 2.0, customer=2, terminal=7, amount=50.0)
    elsewhere = model.score(2, 2.0, customer=3, terminal=8, amount=500.0)
    assert after > before > 0
    assert after > elsewhere
