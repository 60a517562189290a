"""The simulator: deterministic, lazy, contract-conformant, with the typologies it promises."""

from __future__ import annotations

import gzip
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import simulator.generator as generator_module
from simulator import (
    TYPOLOGIES,
    SimulatorConfig,
    generate,
    generate_with_truth,
    paced,
    write_jsonl,
)

TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
Pairs = list[tuple[dict[str, Any], dict[str, Any] | None]]

# Types of every field the simulator may send, per kind (CONTRACT.md section 1).
COMMON = {"kind": str, "event_id": str, "ts": str, "customer_id": str}
OPTIONAL: dict[str, dict[str, type | tuple[type, ...]]] = {
    "transaction": {"amount": (int, float), "currency": str, "direction": str, "txn_type": str,
                    "channel": str, "account_id": str, "counterparty_id": str,
                    "counterparty_country": str, "merchant_category": str, "device_id": str,
                    "product_id": str, "balance_after": (int, float)},
    "app": {"action": str, "session_id": str, "device_id": str, "channel": str,
            "product_id": str, "ip_country": str, "duration_ms": int, "properties": dict},
    "feedback": {"label": str, "ref_event_id": str},
    "profile": {"rm_id": str, "segment": str, "risk_level": int, "marketing_opt_out": bool,
                "birth_year": int, "city": str, "kyc_level": str, "gender": str, "city_tier": str},
}
REQUIRED = {"transaction": ("amount",), "app": ("action",), "feedback": ("label",), "profile": ()}


@pytest.fixture(scope="module")
def stream() -> Pairs:
    """A stream where half the customers are victims, so every short-period typology shows."""
    return list(generate_with_truth(SimulatorConfig(customers=120, days=20, seed=11,
                                                    fraud_rate=0.5, churn_rate=0.1)))


def events_of(pairs: Pairs) -> list[dict[str, Any]]:
    return [event for event, _ in pairs]


def test_same_seed_gives_identical_events_and_other_seeds_differ() -> None:
    config = SimulatorConfig(customers=40, days=4, seed=5)
    first = [orjson.dumps(e) for e in generate(config)]
    assert first == [orjson.dumps(e) for e in generate(config)]
    other = [orjson.dumps(e) for e in generate(SimulatorConfig(customers=40, days=4, seed=6))]
    assert first != other


def test_timestamps_are_rfc3339_ms_and_non_decreasing_and_ids_unique(stream: Pairs) -> None:
    events = events_of(stream)
    stamps = [e["ts"] for e in events]
    assert all(TS_FORMAT.match(ts) for ts in stamps)
    assert stamps == sorted(stamps)
    assert len({e["event_id"] for e in events}) == len(events)
    start, end = "2026-01-05T00:00:00.000Z", "2026-01-25T00:00:00.000Z"
    assert stamps[0] == start and stamps[-1] < end


def test_every_event_has_the_contract_fields_with_the_right_types(stream: Pairs) -> None:
    kinds: Counter[str] = Counter()
    for event in events_of(stream):
        kind = event["kind"]
        kinds[kind] += 1
        for name, expected in COMMON.items():
            assert isinstance(event[name], expected) and 0 < len(event[name]) <= 128, (name, event)
        for name in REQUIRED[kind]:
            assert name in event, (name, event)
        for name, value in event.items():
            if name in COMMON:
                continue
            expected_type = OPTIONAL[kind].get(name)
            assert expected_type is not None, f"{name!r} is not a contract field of {kind}"
            if expected_type is bool:
                assert isinstance(value, bool), (name, event)
            else:  # a JSON boolean is not a number or a string
                assert isinstance(value, expected_type) and not isinstance(value, bool), (name, event)
        _check_values(event)
    assert set(kinds) == {"profile", "transaction", "app", "feedback"}


def _check_values(event: dict[str, Any]) -> None:
    if event["kind"] == "transaction":
        assert math.isfinite(event["amount"]) and event["amount"] >= 0
        assert event["direction"] in ("debit", "credit")
        assert event["balance_after"] >= 0
        assert len(event.get("counterparty_country", "CN")) == 2
    elif event["kind"] == "profile":
        assert 1 <= event["risk_level"] <= 5
        assert isinstance(event["marketing_opt_out"], bool)
        assert event["segment"] in ("mass", "affluent", "private")
    elif event["kind"] == "app":
        assert event.get("duration_ms", 0) >= 0


def test_events_parse_with_the_engine_schema(stream: Pairs) -> None:
    events_schema = pytest.importorskip("schemas.events")
    for event in events_of(stream)[::7]:
        parsed = events_schema.parse_event(orjson.dumps(event))
        assert parsed.event_id == event["event_id"]


def test_balance_after_follows_the_amounts(stream: Pairs) -> None:
    balance: dict[str, float] = {}
    for event in events_of(stream):
        if event["kind"] != "transaction":
            continue
        sign = -1 if event["direction"] == "debit" else 1
        previous = balance.get(event["customer_id"])
        if previous is not None:
            assert event["balance_after"] == pytest.approx(previous + sign * event["amount"])
        balance[event["customer_id"]] = event["balance_after"]


def test_truth_covers_exactly_the_transactions(stream: Pairs) -> None:
    for event, truth in stream:
        if event["kind"] != "transaction":
            assert truth is None
            continue
        assert truth is not None
        assert (truth["event_id"], truth["customer_id"], truth["ts"]) == (
            event["event_id"], event["customer_id"], event["ts"])
        assert truth["is_fraud"] == (truth["typology"] is not None) == (truth["case_id"] is not None)


def test_every_short_period_typology_is_injected_with_its_signature(stream: Pairs) -> None:
    by_typology: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cases: dict[str, set[str]] = defaultdict(set)
    for event, truth in stream:
        if truth is not None and truth["is_fraud"]:
            by_typology[truth["typology"]].append(event)
            cases[truth["typology"]].add(truth["case_id"])
    assert set(by_typology) == set(TYPOLOGIES) - {"dormant_reactivation"}
    for typology, case_ids in cases.items():
        assert len(case_ids) >= 3, typology
        # One case, one victim.
        customers = defaultdict(set)
        for event, truth in stream:
            if truth is not None and truth["typology"] == typology:
                customers[truth["case_id"]].add(event["customer_id"])
        assert all(len(c) == 1 for c in customers.values())
    assert any(e["amount"] <= 5 for e in by_typology["card_testing"])
    deposits = [e for e in by_typology["structuring"] if e["txn_type"] == "cash_deposit"]
    assert deposits and all(45_000 <= e["amount"] < 50_000 for e in deposits)
    assert all(e["counterparty_country"] != "CN" for e in by_typology["foreign_spend"])
    assert all(e["txn_type"] == "transfer" and e["direction"] == "debit"
               and e["channel"] in ("app", "web") for e in by_typology["account_takeover"])
    _check_mule_flows(stream)


def _check_mule_flows(stream: Pairs) -> None:
    flows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event, truth in stream:
        if truth is not None and truth["typology"] == "mule_in_out":
            flows[truth["case_id"]][event["direction"] == "debit"] += event["amount"]
    complete = [(i, o) for i, o in flows.values() if i > 0]
    assert complete
    assert all(o <= i + 0.01 for i, o in complete)
    assert any(0.8 * i <= o for i, o in complete)


def test_account_takeover_starts_with_failed_logins_from_the_fraud_device(stream: Pairs) -> None:
    failed_devices: dict[str, set[str]] = defaultdict(set)
    checked = 0
    for event, truth in stream:
        if event["kind"] == "app" and event["action"] == "login_failed":
            failed_devices[event["customer_id"]].add(event["device_id"])
        if truth is not None and truth["typology"] == "account_takeover":
            assert event["device_id"] in failed_devices[event["customer_id"]]
            checked += 1
    assert checked


def test_dormant_reactivation_follows_more_than_90_silent_days() -> None:
    config = SimulatorConfig(customers=12, days=125, seed=2, fraud_rate=1.0, app_events=False)
    last_seen: dict[str, datetime] = {}
    gaps = []
    for event, truth in generate_with_truth(config):
        ts = datetime.fromisoformat(event["ts"])
        if truth is not None and truth["typology"] == "dormant_reactivation":
            gaps.append((ts - last_seen[event["customer_id"]]).days)
        if event["kind"] == "transaction":
            last_seen[event["customer_id"]] = ts
    assert gaps and min(gaps) > 90


def test_feedback_refers_to_earlier_transactions_and_labels_all_fraud(stream: Pairs) -> None:
    transactions = {e["event_id"]: (e, t) for e, t in stream if t is not None}
    labelled: dict[str, str] = {}
    for event in events_of(stream):
        if event["kind"] != "feedback":
            continue
        if event["label"] in ("churned", "retained"):
            assert "ref_event_id" not in event
            continue
        txn, truth = transactions[event["ref_event_id"]]
        assert txn["ts"] < event["ts"] and txn["customer_id"] == event["customer_id"]
        assert event["label"] == ("fraud" if truth["is_fraud"] else "legit")
        delay = datetime.fromisoformat(event["ts"]) - datetime.fromisoformat(txn["ts"])
        assert 2 <= delay.total_seconds() / 86_400 <= 10
        labelled[event["ref_event_id"]] = event["label"]
    end = datetime(2026, 1, 25, tzinfo=UTC)
    for event_id, (txn, truth) in transactions.items():
        if truth["is_fraud"] and (end - datetime.fromisoformat(txn["ts"])).days >= 10:
            assert labelled.get(event_id) == "fraud"
    legit = [label for label in labelled.values() if label == "legit"]
    assert 0.02 < len(legit) / len(transactions) < 0.08


def test_churners_leave_with_signals_and_a_label(stream: Pairs) -> None:
    events = events_of(stream)
    labels = {(e["customer_id"], e["label"]) for e in events if e["kind"] == "feedback"}
    churned = {c for c, label in labels if label == "churned"}
    retained = {c for c, label in labels if label == "retained"}
    assert churned and retained and not churned & retained
    last_activity = {e["customer_id"]: e["ts"] for e in events if e["kind"] in ("transaction", "app")}
    churn_label_ts = {e["customer_id"]: e["ts"] for e in events
                      if e["kind"] == "feedback" and e["label"] == "churned"}
    assert all(last_activity[c] < churn_label_ts[c] for c in churned)
    actions = Counter(e["action"] for e in events if e["kind"] == "app")
    assert actions["account_close_view"] and actions["complaint"]


def test_app_events_are_a_large_share_and_can_be_switched_off() -> None:
    config = SimulatorConfig(customers=60, days=10, seed=4)
    kinds = Counter(e["kind"] for e in generate(config))
    assert 0.35 <= kinds["app"] / sum(kinds.values()) <= 0.55
    off = SimulatorConfig(customers=60, days=10, seed=4, app_events=False, fraud_rate=0.5)
    assert not any(e["kind"] == "app" for e in generate(off))


def test_few_transactions_at_night(stream: Pairs) -> None:
    local_hours = Counter((int(e["ts"][11:13]) + 8) % 24 for e in events_of(stream)
                          if e["kind"] == "transaction")
    night = sum(local_hours[h] for h in range(6))
    assert night / sum(local_hours.values()) < 0.05


def test_generation_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real_build: Callable[..., Any] = generator_module.build_customer

    def counting_build(*args: Any) -> Any:
        built.append(1)
        return real_build(*args)

    monkeypatch.setattr(generator_module, "build_customer", counting_build)
    first = list(itertools.islice(generate(SimulatorConfig(customers=100_000)), 1000))
    assert len(first) == 1000 and {e["kind"] for e in first} == {"profile"}
    assert len(built) <= 1001


def test_write_jsonl_is_reproducible_and_counts(tmp_path: Path) -> None:
    config = SimulatorConfig(customers=30, days=5, seed=9, fraud_rate=0.5)
    counts = write_jsonl(config, tmp_path / "a.jsonl.gz", tmp_path / "truth.jsonl")
    write_jsonl(config, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    lines = gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).splitlines()
    events = [orjson.loads(line) for line in lines]
    truth = [orjson.loads(line) for line in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert events == list(generate(config))
    assert counts["events"] == len(events)
    assert counts["by_kind"] == dict(Counter(e["kind"] for e in events))
    assert len(truth) == counts["by_kind"]["transaction"]
    assert sum(counts["fraud_transactions"].values()) == sum(t["is_fraud"] for t in truth)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="fraud_rate"):
        SimulatorConfig(fraud_rate=1.5)
    with pytest.raises(ValueError, match="timezone"):
        SimulatorConfig(start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="feedback_delay_days"):
        SimulatorConfig(feedback_delay_days=(5, 1))
    with pytest.raises(ValueError, match="days"):
        SimulatorConfig(days=0)


class FakeClock:
    """A monotonic clock that only moves when something sleeps or ``advance`` is called."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_paced_keeps_the_rate_without_sleeping_per_event() -> None:
    clock = FakeClock()
    out = list(paced(range(1000), 1000.0, sleep=clock.sleep, monotonic=clock.monotonic))
    assert out == list(range(1000))
    assert clock.now - 100.0 == pytest.approx(0.999, abs=0.006)
    assert len(clock.sleeps) <= 1000 * 0.001 / 0.005 + 1
    assert all(s > 0.005 for s in clock.sleeps)


def test_paced_does_not_sleep_when_the_consumer_is_slow_and_does_not_burst_after() -> None:
    clock = FakeClock()
    seen = []
    for item in paced(range(20), 10.0, sleep=clock.sleep, monotonic=clock.monotonic):
        seen.append((item, clock.now))
        if item == 4:
            clock.now += 5.0  # the consumer stalls for 5 s (50 items' worth)
    assert [i for i, _ in seen] == list(range(20))
    after_stall = [t for i, t in seen if i >= 5]
    gaps = [b - a for a, b in itertools.pairwise(after_stall)]
    assert all(g == pytest.approx(0.1) for g in gaps[1:])
    with pytest.raises(ValueError):
        list(paced([1], 0.0))
