"""Hostile input: events valid by type but with values meant to stop or blind the engine, and
steps that raise. None of it may stop the engine or change what it detects for anyone else."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import load_settings
from detectors.customer import CustomerModel
from detectors.fraud import FraudDetector
from detectors.profile import CustomerProfile
from detectors.windows import SlidingWindows
from engine.admission import InputBounds
from engine.shard import Shard
from flows.modes import engine_config, event_clock
from schemas.events import parse_event
from schemas.outputs import DeadLetter, format_ts
from tests.conftest import ROOT, replay


def with_lines(events: Path, out: Path, *extra: dict[str, Any], at: float = 0.5) -> Path:
    """``events`` with ``extra`` events inserted at the fraction ``at`` of the file."""
    lines = [line for line in events.read_bytes().splitlines() if line]
    cut = int(len(lines) * at)
    out.write_bytes(b"\n".join([*lines[:cut], *map(orjson.dumps, extra), *lines[cut:]]) + b"\n")
    return out


def run_replay(path: Path, out: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "run.py", "replay", "--input", str(path), "--alerts-out", str(out / "alerts.jsonl"),
         "--scores-out", str(out / "scores.jsonl"), "--state-out", str(out / "state.jsonl"),
         "--dead-letter-out", str(out / "dead.jsonl")],
        cwd=ROOT, capture_output=True, timeout=600, env={**os.environ, **env})


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def customer_in(events: Path) -> str:
    return str(orjson.loads(events.read_bytes().splitlines()[-1])["customer_id"])


def test_an_amount_of_1e20_is_dead_lettered_and_the_replay_goes_on(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    customer = customer_in(events)
    huge = {"kind": "transaction", "event_id": "huge", "customer_id": customer, "ts": "2026-01-12T10:00:00Z",
            "amount": 1e20, "balance_after": 1e20}
    proc = run_replay(with_lines(events, tmp_path / "huge.jsonl", huge), tmp_path / "out")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    dead = records(tmp_path / "out" / "dead.jsonl")
    assert [d["reason"] for d in dead] == ["field 'amount': 1e+20 is above the configured max_amount 1e+15"]
    clean = replay(events, tmp_path / "clean")
    assert (tmp_path / "out" / "alerts.jsonl").read_bytes() == clean.raw("alerts")
    assert (tmp_path / "out" / "state.jsonl").read_bytes() == clean.raw("state")


def test_window_sums_stay_exact_when_the_bounds_allow_huge_amounts(tmp_path: Path) -> None:
    """With ``max_amount`` raised, a customer's 1e20 payment leaves the day window before a
    small one: the running sum, which had absorbed the small values, must not go below zero
    (which stopped the engine in ``log1p``) nor lose what remains."""
    hour = 3600.0
    start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    timeline = [(0.0, 5.0), (1.0, 1e20), (2.0, 3.0), (3.0, 0.5), (24.5, 4.0), (25.5, 4.0), (26.5, 4.0), (27.5, 4.0)]
    lines = [orjson.dumps({"kind": "transaction", "event_id": f"e{i}", "customer_id": "whale",
                           "ts": format_ts(start + hours * hour), "amount": amount})
             for i, (hours, amount) in enumerate(timeline)]
    path = tmp_path / "whale.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = run_replay(path, tmp_path / "out", CRM__INPUT__MAX_AMOUNT="1e30")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert not (tmp_path / "out" / "dead.jsonl").read_bytes()
    scores = records(tmp_path / "out" / "scores.jsonl")
    assert len(scores) == len(lines) and all(0.0 <= s["fraud_score"] <= 1.0 for s in scores)
    profile = CustomerProfile()
    for line in lines:
        features = profile.observe_transaction(parse_event(line))  # type: ignore[arg-type]
        assert all(math.isfinite(value) for value in features)
    assert profile.all_txns.sums[:2] == [4.0, 16.0]  # the last hour; the last day: exactly 4 x 4.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3 * 86_400.0), st.sampled_from([0.0, 1e-9, 0.5, 3.0, 250.0, 1e15, 1e20])),
                min_size=1, max_size=60))
def test_window_sums_equal_the_exact_sums_of_what_they_hold(steps: list[tuple[float, float]]) -> None:
    windows = SlidingWindows((3600.0, 86_400.0), max_items=32)
    t, held = 0.0, []
    for gap, value in steps:
        t += gap
        windows.add(t, value)
        held = [(ht, hv) for ht, hv in [*held, (t, value)]][-32:]
        for i, span in enumerate(windows.spans):
            live = [hv for ht, hv in held if ht > t - span][-windows.counts[i]:] if windows.counts[i] else []
            exact = math.fsum(live)
            assert windows.sums[i] >= 0.0
            assert abs(windows.sums[i] - exact) <= 1e-9 * max(1.0, exact), (i, windows.sums[i], exact)


def test_a_forged_future_timestamp_in_a_replay_changes_nothing(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """Year 9999 is outside the configured range; a year 2031 is in it but years ahead of the
    rest of the stream. Both are dead-lettered wherever they sit in the file, and every
    output is what the stream without them gives."""
    events, _ = sim_stream
    customer = customer_in(events)
    forged = [{"kind": "transaction", "event_id": f"forged-{year}", "customer_id": customer,
               "ts": f"{year}-12-31T00:00:00Z", "amount": 10.0, "counterparty_id": "m1"} for year in (9999, 2031)]
    clean = replay(events, tmp_path / "clean")
    for at in (0.0, 0.5, 1.0):
        out = replay(with_lines(events, tmp_path / f"forged{at}.jsonl", *forged, at=at), tmp_path / f"out{at}")
        reasons = [d["reason"] for d in out.records("dead_letters")]
        assert len(reasons) == 2, reasons
        assert "outside the configured range" in reasons[0] and "max_future_skew_s" in reasons[1]
        for name in ("alerts", "scores", "state", "prompts"):
            assert out.raw(name) == clean.raw(name), (at, name)


def test_a_sparse_recording_keeps_its_long_gaps(tmp_path: Path) -> None:
    """A customer dormant for months comes back: far ahead of the events before, but not a
    forged timestamp (the recording is sparse throughout), so nothing is refused."""
    start = datetime(2026, 1, 5, tzinfo=UTC)
    lines = [orjson.dumps({"kind": "transaction", "event_id": f"e{i}", "customer_id": "sleeper",
                           "ts": (start + timedelta(days=100 * i)).isoformat(), "amount": 100.0 + i})
             for i in range(5)]
    path = tmp_path / "sparse.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = replay(path, tmp_path / "out")
    assert not out.records("dead_letters")
    assert len(out.records("scores")) == 5


STEPS: dict[str, tuple[type, str]] = {
    "customer_profile": (CustomerModel, "observe"),
    "shared_scoring": (FraudDetector, "assess_batch"),
    "customer_view": (Shard, "_view"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_an_event_that_raises_in_a_step_is_dead_lettered_and_the_rest_goes_on(
        step: str, sim_stream: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events, _ = sim_stream
    sent = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    victim = next(e for e in sent[len(sent) // 2:] if e["kind"] == "transaction")
    clean = replay(events, tmp_path / "clean")
    cls, name = STEPS[step]
    original: Callable[..., Any] = getattr(cls, name)

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        items = [item for arg in args for item in (arg if isinstance(arg, list) else [arg])]
        ids = [getattr(item, "event_id", None) or getattr(getattr(item, "event", None), "event_id", None)
               for item in items]
        if victim["event_id"] in ids:
            raise ZeroDivisionError("injected")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, failing)
    out = replay(events, tmp_path / "out")
    [letter] = out.records("dead_letters")
    assert letter["reason"] == f"step {step} failed on event {victim['event_id']}: ZeroDivisionError: injected"
    assert letter["source"]["step"] == step and letter["source"]["event_id"] == victim["event_id"]
    assert orjson.loads(DeadLetter(**letter).raw())["event_id"] == victim["event_id"]
    scored = {s["event_id"] for s in out.records("scores")}
    assert scored == {s["event_id"] for s in clean.records("scores")} - {victim["event_id"]}


    def others(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in alerts if a["customer_id"] != victim["customer_id"]]
    if step == "customer_profile":  # it raised before anything learned from the event
        without = tmp_path / "without.jsonl"
        without.write_bytes(b"".join(line + b"\n" for line in events.read_bytes().splitlines()
                                     if orjson.loads(line)["event_id"] != victim["event_id"]))
        assert out.raw("alerts") == replay(without, tmp_path / "without").raw("alerts")
    elif step == "shared_scoring":  # the anomaly forest had learned the row; the rest had not
        assert [a["alert_id"] for a in others(out.records("alerts"))] == \
            [a["alert_id"] for a in others(clean.records("alerts"))]
    else:  # everything upstream had processed the event
        assert others(out.records("alerts")) == others(clean.records("alerts"))


# -- fuzz: every field of the contract at its extremes ---------------------------------------

BOUNDS = InputBounds()
EARLIEST, LATEST = BOUNDS.time_range()
ids = st.one_of(st.sampled_from(["c", "c:events", "c{1}", " c ", "c\u00e9\u4e2d", "x" * 128, "0"]),
                st.text(min_size=1, max_size=128).filter(lambda s: "\x00" not in s))
short = st.text(min_size=1, max_size=256)
amounts = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 0.004, 4.99, 49_999.99, 1e9, BOUNDS.max_amount]),
                    st.floats(0.0, BOUNDS.max_amount))
signed = st.floats(-BOUNDS.max_amount, BOUNDS.max_amount)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 times across the accepted range, edges included, with odd offsets."""
    t = draw(st.one_of(st.sampled_from([EARLIEST, LATEST - 1e-3, 1.8e9, 1.8e9 + 1e-3]),
                       st.floats(EARLIEST + 86_400, LATEST - 86_400)))
    offset = draw(st.sampled_from([0, 14 * 60, -14 * 60, 330, -90]))
    moment = datetime.fromtimestamp(t, UTC).astimezone(timezone(timedelta(minutes=offset)))
    return moment.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"])))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def common(draw: st.DrawFn, kind: str, n: int) -> dict[str, Any]:
    return {"kind": kind, "event_id": f"{n}-{draw(short)}"[:128], "customer_id": draw(ids), "ts": draw(timestamps())}


@st.composite
def contract_events(draw: st.DrawFn, n: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["transaction", "transaction", "app", "feedback", "profile", "control"]))
    event = common(draw, kind, n)
    if kind == "transaction":
        event |= {"amount": draw(amounts), "currency": draw(optional(st.text(min_size=1, max_size=3))),
                  "direction": draw(optional(st.sampled_from(["debit", "credit"]))),
                  "txn_type": draw(optional(st.sampled_from(["card_payment", "transfer", "cash_deposit",
                                                             "cash_withdrawal", "fund_purchase"]) | short)),
                  "channel": draw(optional(short)), "account_id": draw(optional(ids)),
                  "counterparty_id": draw(optional(ids)),
                  "counterparty_country": draw(optional(st.text(min_size=1, max_size=2))),
                  "merchant_category": draw(optional(short)), "device_id": draw(optional(ids)),
                  "product_id": draw(optional(ids)), "balance_after": draw(optional(signed))}
    elif kind == "app":
        event |= {"action": draw(st.sampled_from(["login", "login_failed", "password_reset", "device_bind",
                                                  "contact_change", "product_view", "complaint",
                                                  "account_close_view", "transfer_out_view", "unsubscribe",
                                                  "maturity_notice"]) | short),
                  "session_id": draw(optional(ids)), "device_id": draw(optional(ids)),
                  "channel": draw(optional(short)), "product_id": draw(optional(ids)),
                  "ip_country": draw(optional(st.text(min_size=1, max_size=2))),
                  "duration_ms": draw(optional(st.integers(0, 2**63 - 1))),
                  "properties": draw(optional(st.dictionaries(short, st.integers(-(2**63), 2**63 - 1) | short,
                                                              max_size=3)))}
    elif kind == "feedback":
        event |= {"label": draw(st.sampled_from(["fraud", "legit", "churned", "retained", "nba_accepted",
                                                 "nba_dismissed", "nba_converted"])),
                  "ref_event_id": draw(optional(st.sampled_from([f"{i}-" for i in range(n)] or ["0-"]) | ids)),
                  "ref_alert_id": draw(optional(ids)), "ref_prompt_id": draw(optional(ids))}
    elif kind == "profile":
        event |= {"rm_id": draw(optional(ids)), "segment": draw(optional(short)),
                  "risk_level": draw(optional(st.integers(1, 5))), "marketing_opt_out": draw(optional(st.booleans())),
                  "birth_year": draw(optional(st.integers(1900, 2100))), "city": draw(optional(short)),
                  "kyc_level": draw(optional(short))}
    else:
        event |= {"action": draw(st.sampled_from(["snooze", "unsnooze"])),
                  "alert_type": draw(st.sampled_from(["*", "suspicious_transaction"]) | short),
                  "until": draw(timestamps()), "by": draw(optional(short))}
    return {k: v for k, v in event.items() if v is not None}


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    size = draw(st.integers(1, 40))
    return [draw(contract_events(i)) for i in range(size)]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow or a NaN in numpy would poison the models
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_fuzz_no_exception_escapes_the_steps(stream: list[dict[str, Any]]) -> None:
    """Valid-by-contract events with extreme values for every field, through the engine's
    three steps in event-time order: every one is processed (no step fails on any), every
    score and record is well-formed."""
    events = sorted((parse_event(orjson.dumps(e)) for e in stream), key=lambda e: e.t)
    config = engine_config(load_settings(), event_clock, events[-1].t, emit_scores=True)
    shard = Shard(config)
    out = shard.process(events) + shard.finish(events[-1].t)
    assert not [r for r in out if isinstance(r, DeadLetter)], config.failures.counts
    for record in out:
        data = orjson.loads(record.to_bytes())
        for key in ("fraud_score", "score", "churn_score", "fraud_risk"):
            if key in data:
                assert 0.0 <= data[key] <= 1.0, (key, data)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(streams(), min_size=3, max_size=3))
def test_fuzz_a_replay_of_contract_events_exits_0(tmp_path_factory: pytest.TempPathFactory,
                                                  parts: list[list[dict[str, Any]]]) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "fuzz.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for part in parts for e in part) + b"\n")
    proc = run_replay(path, tmp / "out")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    failed = [d for d in records(tmp / "out" / "dead.jsonl") if "failed on event" in d["reason"]]
    assert not failed, failed[:3]
