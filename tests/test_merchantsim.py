"""The profile-based card generator: deterministic, in event-time order, contract-conformant,
with the fraud bursts it promises; and the batch baseline of its benchmark."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from bench import merchantsim
from bench.card_benchmark import load_truth
from bench.merchant_benchmark import BASIC, CUSTOMER, batch_scores, stream_table
from bench.merchantsim import DAY_S, MerchantSimConfig, Transactions, simulate
from detectors.quality import auc_and_average_precision
from schemas.events import parse_event

CONFIG = MerchantSimConfig(customers=300, days=60, seed=3)


@dataclass(frozen=True)
class Generated:
    tx: Transactions
    events: list[dict[str, Any]]
    raw: list[bytes]
    truth: Path
    events_path: Path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    out = tmp_path_factory.mktemp("merchantsim")
    people, tx = simulate(CONFIG)
    merchantsim.write_events(people, tx, CONFIG, out / "events.jsonl.gz")
    merchantsim.write_truth(tx, CONFIG, out / "truth.csv")
    merchantsim.write_events(people, tx, CONFIG, out / "events.jsonl")
    raw = (out / "events.jsonl").read_bytes().splitlines()
    return Generated(tx, [orjson.loads(line) for line in raw], raw, out / "truth.csv", out / "events.jsonl.gz")


def _t(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def test_same_seed_same_stream_other_seed_another(tmp_path: Path) -> None:
    small = MerchantSimConfig(customers=60, days=20, seed=5)
    paths = []
    for name, config in (("a", small), ("b", small), ("c", MerchantSimConfig(customers=60, days=20, seed=6))):
        people, tx = simulate(config)
        merchantsim.write_events(people, tx, config, tmp_path / f"{name}.jsonl")
        merchantsim.write_truth(tx, config, tmp_path / f"{name}.csv")
        paths.append(tmp_path / name)
    a, b, c = ((p.with_suffix(".jsonl").read_bytes(), p.with_suffix(".csv").read_bytes()) for p in paths)
    assert a == b
    assert a[0] != c[0]


def test_every_event_is_valid_and_in_event_time_order(generated: Generated) -> None:
    for line in generated.raw:
        parse_event(line)
    times = [_t(e["ts"]) for e in generated.events]
    assert times == sorted(times)
    assert all(e["ts"].endswith("Z") for e in generated.events)
    kinds = Counter(e["kind"] for e in generated.events)
    assert kinds == {"profile": CONFIG.customers, "transaction": len(generated.tx), "feedback": len(generated.tx)}
    first_seen: dict[str, str] = {}
    for e in generated.events:
        first_seen.setdefault(e["customer_id"], e["kind"])
    assert set(first_seen.values()) == {"profile"}  # a customer's profile comes before its transactions


def test_profiles_carry_demographics(generated: Generated) -> None:
    profiles = [e for e in generated.events if e["kind"] == "profile"]
    assert {p["segment"] for p in profiles} <= {"mass", "affluent", "private"}
    assert Counter(p["segment"] for p in profiles)["mass"] > len(profiles) / 2
    assert all(1930 < p["birth_year"] < 2010 and "-" in p["city"] for p in profiles)


def test_transactions_have_categories_channels_and_local_rhythm(generated: Generated) -> None:
    txns = [e for e in generated.events if e["kind"] == "transaction"]
    for e in txns:
        assert e["merchant_category"] in merchantsim.CATEGORIES
        assert e["channel"] == ("online" if e["merchant_category"].endswith("_net") else "pos")
        assert e["counterparty_id"].startswith("merch") and e["currency"] == "CNY"
    tx = generated.tx
    legit_hours = np.bincount(tx.local_hour[~tx.fraud], minlength=24)
    assert legit_hours[9:21].sum() > 0.7 * legit_hours.sum()  # days, in local time
    assert len(set(tx.category[~tx.fraud].tolist())) == len(merchantsim.CATEGORIES)


def test_every_transaction_is_labelled_once_seven_days_later(generated: Generated) -> None:
    tx_time = {e["event_id"]: (_t(e["ts"]), e["customer_id"]) for e in generated.events if e["kind"] == "transaction"}
    feedback = [e for e in generated.events if e["kind"] == "feedback"]
    assert Counter(f["ref_event_id"] for f in feedback) == Counter(dict.fromkeys(tx_time, 1))
    truth = load_truth(generated.truth)
    for f in feedback:
        t, customer = tx_time[f["ref_event_id"]]
        assert _t(f["ts"]) - t == 7 * DAY_S and f["customer_id"] == customer
        assert (f["label"] == "fraud") == bool(truth.fraud[int(f["ref_event_id"][2:])])


def test_truth_matches_the_stream(generated: Generated) -> None:
    truth = load_truth(generated.truth)
    tx = generated.tx
    assert len(truth) == len(tx)
    assert np.array_equal(truth.fraud, tx.fraud) and np.array_equal(truth.customer, tx.customer)
    assert np.array_equal(truth.day, tx.seconds // DAY_S)
    assert set(truth.scenario[truth.fraud].tolist()) == {1, 2} and not truth.scenario[~truth.fraud].any()


def test_frauds_are_about_two_percent_in_short_night_bursts(generated: Generated) -> None:
    tx = generated.tx
    assert 0.015 < tx.fraud.mean() < 0.026
    night = np.isin(tx.local_hour, merchantsim.NIGHT_HOURS)
    assert night[tx.fraud].mean() > 0.7
    assert night[~tx.fraud].mean() < 0.1
    risky = {c for mix in merchantsim.FRAUD_MIX.values() for c in mix} | set(merchantsim.PROBE_CATEGORY.values())
    assert {merchantsim.CATEGORIES[k] for k in tx.category[tx.fraud].tolist()} <= risky
    bursts = np.unique(tx.burst[tx.fraud])
    assert bursts.size >= 20
    cards: Counter[int] = Counter()
    for b in bursts.tolist():
        rows = np.flatnonzero(tx.burst == b)
        assert 3 <= rows.size <= 15
        assert np.ptp(tx.seconds[rows]) <= 3 * DAY_S
        assert np.unique(tx.customer[rows]).size == 1 and np.unique(tx.scenario[rows]).size == 1
        cards[int(tx.customer[rows[0]])] += 1
        card = tx.customer == tx.customer[rows[0]]
        own = set(tx.merchant[card & ~tx.fraud].tolist())
        assert not own & set(tx.merchant[rows].tolist())  # merchants the card never uses
        window = card & ~tx.fraud & (tx.seconds >= tx.seconds[rows].min() - 5 * DAY_S)
        assert window.any()  # the holder keeps spending around the burst
    assert sum(n > 1 for n in cards.values()) <= 0.15 * len(cards)  # rarely compromised twice


def test_the_batch_baseline_learns_only_labels_known_before_the_cutoff(generated: Generated) -> None:
    n = len(generated.tx)
    table = stream_table(generated.events_path, n, CONFIG.utc_offset_hours)
    assert np.array_equal(table.features["hour"], generated.tx.local_hour.astype(float))
    assert np.array_equal(table.label, generated.tx.fraud.astype(float))
    cutoff = CONFIG.start_epoch + 40 * DAY_S
    known = table.label_time < cutoff
    assert np.array_equal(known, generated.tx.seconds + 7 * DAY_S < 40 * DAY_S)
    test = (generated.tx.seconds >= 40 * DAY_S) & (generated.tx.seconds < 47 * DAY_S)
    for names in (BASIC, (*BASIC, *CUSTOMER)):
        scores = batch_scores(table, cutoff, names)
        auc, _ = auc_and_average_precision(generated.tx.fraud[test], scores[test])
        assert auc > 0.9
