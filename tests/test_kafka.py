"""Integration: events produced into a real Kafka-protocol broker, alerts read back from Kafka."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from schemas.outputs import format_ts
from tests.brokers import consume_all, create_topics, produce, tansu_broker
from tests.conftest import ROOT, malformed_line, replay


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with tansu_broker(tmp_path) as address:
        yield address


def start_engine(bootstrap: str, log: Path, *args: str, **topics: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRM__KAFKA__BOOTSTRAP_SERVERS": bootstrap, "CRM__ENGINE__EPOCH_INTERVAL_S": "0.5"}
    env.update({f"CRM__KAFKA__{name.upper()}": value for name, value in topics.items()})
    return subprocess.Popen([sys.executable, "run.py", "live", "--quiet", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def stop(engine: subprocess.Popen[bytes]) -> int:
    engine.send_signal(signal.SIGINT)
    try:
        return engine.wait(20)
    finally:
        if engine.poll() is None:
            engine.kill()


def without_emitted_at(raw: bytes) -> dict:
    record = orjson.loads(raw)
    record.pop("emitted_at")
    return record


def test_live_through_kafka_equals_replay(broker: str, sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """One topic in event-time order with 10,000 malformed messages mixed in, and three valid
    but hostile ones (an amount of 1e20, the year 9999, two days ahead of the wall clock):
    every bad one reaches the dead-letter topic with its offset and reason, and the live
    engine emits exactly the replay's alerts and next-best-action prompts of the stream
    without them (so every valid event was processed as in replay, and none of the hostile
    ones changed what was detected)."""
    events, _ = sim_stream
    lines = [line for line in events.read_bytes().splitlines() if line]
    rng = random.Random(11)
    stream: list[bytes] = list(lines)
    bad_offsets = set()
    for _ in range(10_000):
        stream.insert(rng.randrange(len(stream) + 1), b"")  # placeholders keep offsets simple
    for offset, value in enumerate(stream):
        if not value:
            stream[offset] = malformed_line(rng, lines)
            bad_offsets.add(offset)
    # Valid by type, hostile by value: none may stop the engine or change what it detects.
    customer = orjson.loads(lines[-1])["customer_id"]
    hostile = [{"kind": "transaction", "event_id": "huge", "customer_id": customer, "ts": "2026-01-12T10:00:00Z",
                "amount": 1e20},
               {"kind": "transaction", "event_id": "y9999", "customer_id": customer, "ts": "9999-12-31T00:00:00Z",
                "amount": 10.0},
               {"kind": "app", "event_id": "ahead", "customer_id": customer, "action": "login",
                "ts": format_ts(time.time() + 2 * 86_400)}]
    for event in hostile:
        offset = rng.randrange(len(stream) // 4, len(stream))
        stream.insert(offset, orjson.dumps(event))
        bad_offsets = {o + (o >= offset) for o in bad_offsets} | {offset}
    bad = [stream[offset] for offset in sorted(bad_offsets)]
    create_topics(broker, {"events": 1, "alerts": 1, "nba_prompts": 1, "dead_letter": 1})
    produce(broker, "events", stream)
    replayed = replay(events, tmp_path / "replay")
    expected, expected_prompts = replayed.raw("alerts").splitlines(), replayed.raw("prompts").splitlines()
    assert expected and expected_prompts
    engine = start_engine(broker, tmp_path / "engine.log", transactions_topic="events",
                          app_topic="events", feedback_topic="events", profile_topic="events")
    try:
        alerts = consume_all(broker, "alerts", expect=len(expected), timeout=120)
        dead = consume_all(broker, "dead_letter", expect=len(bad), timeout=60)
        prompts = consume_all(broker, "nba_prompts", expect=len(expected_prompts), timeout=60)
    finally:
        assert stop(engine) == 0, (tmp_path / "engine.log").read_text()[-3000:]
    assert sorted(map(without_emitted_at, alerts), key=str) == sorted(map(without_emitted_at, expected), key=str)
    assert sorted(prompts) == sorted(expected_prompts)
    letters = [orjson.loads(raw) for raw in dead]
    assert len(letters) == 10_003
    by_offset = {letter["source"]["offset"]: letter["reason"] for letter in letters}
    reasons = {event["event_id"]: by_offset[stream.index(orjson.dumps(event))] for event in hostile}
    assert "max_amount" in reasons["huge"] and "outside the configured range" in reasons["y9999"]
    assert "ahead of the wall clock" in reasons["ahead"]
    assert {letter["source"]["offset"] for letter in letters} == bad_offsets
    assert all(letter["source"]["topic"] == "events" and letter["reason"] for letter in letters)


def test_four_topics_many_partitions_two_workers(broker: str, sim_stream: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    events, _ = sim_stream
    by_topic: dict[str, list[bytes]] = {"transactions": [], "app_events": [], "feedback": [], "profiles": []}
    topic_of = {"transaction": "transactions", "app": "app_events", "feedback": "feedback",
                "profile": "profiles"}
    for line in events.read_bytes().splitlines():
        if line:
            by_topic[topic_of[orjson.loads(line)["kind"]]].append(line)
    create_topics(broker, {**dict.fromkeys(by_topic, 3), "alerts": 2, "nba_prompts": 1, "dead_letter": 1})
    bad = [b"not json at all", b'{"kind":"transaction","event_id":"e","ts":"2026-01-01T00:00:00Z"}']
    for topic, values in by_topic.items():
        produce(broker, topic, values, key_of=lambda v: orjson.loads(v)["customer_id"].encode())
    produce(broker, "transactions", bad)
    engine = start_engine(broker, tmp_path / "engine.log", "--workers", "2")
    try:
        dead = consume_all(broker, "dead_letter", expect=len(bad), timeout=60)
        alerts = consume_all(broker, "alerts", timeout=90, idle=5.0)
    finally:
        assert stop(engine) == 0, (tmp_path / "engine.log").read_text()[-3000:]
    assert len(dead) == len(bad)
    records = [orjson.loads(raw) for raw in alerts]
    assert records, "no alerts arrived on the alerts topic"
    assert len({r["alert_id"] for r in records}) == len(records)
    assert {"alert_id", "type", "severity", "score", "customer_id", "reasons", "schema_version"} <= set(records[0])


def test_a_missing_input_topic_is_a_clear_error(broker: str, tmp_path: Path) -> None:
    create_topics(broker, {"transactions": 1})  # the other three are missing
    engine = start_engine(broker, tmp_path / "engine.log")
    assert engine.wait(60) != 0
    log = (tmp_path / "engine.log").read_text()
    assert "Kafka topic 'app_events' is not available" in log, log[-2000:]
