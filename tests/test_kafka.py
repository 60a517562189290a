"""Integration: events produced into a real Kafka-protocol broker (Tansu, and librdkafka's mock
cluster), alerts read back from Kafka."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from schemas.outputs import DeadLetter, format_ts
from tests.brokers import consume_all, create_topics, free_port, produce, tansu_broker, tansu_process
from tests.conftest import ROOT, malformed_line, replay
from tests.live_engine import wait_for

#: The Kafka sinks' own dead letters (records the broker refused), beside the engine's log.
REFUSED = "kafka_refused.jsonl"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with tansu_broker(tmp_path) as address:
        yield address


def start_engine(bootstrap: str, log: Path, *args: str, env: dict[str, str] | None = None,
                 **topics: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "CRM__KAFKA__BOOTSTRAP_SERVERS": bootstrap, "CRM__ENGINE__EPOCH_INTERVAL_S": "0.5",
               "CRM__KAFKA__SINK_DEAD_LETTER_PATH": str(log.parent / REFUSED), **(env or {})}
    environ.update({f"CRM__KAFKA__{name.upper()}": value for name, value in topics.items()})
    return subprocess.Popen([sys.executable, "run.py", "live", "--quiet", *args], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def group_offsets(bootstrap: str, topics: list[str], group: str = "crm-engine") -> dict[tuple[str, int], int]:
    """Each partition's committed offset in ``group``, as ``kafka-consumer-groups`` shows it
    (0 where none is committed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        metadata = consumer.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in topics for p in metadata[t].partitions]
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def stop(*engines: subprocess.Popen[bytes]) -> int:
    """Ask every process (of one cluster) to stop, then wait for each; the worst exit code."""
    for engine in engines:
        engine.send_signal(signal.SIGINT)
    codes = []
    for engine in engines:
        try:
            codes.append(engine.wait(20))
        finally:
            if engine.poll() is None:
                engine.kill()
    return max(codes, key=abs)


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
    # Consumer and producer properties apart: no client is given one of the other kind's.
    kinds = {"consumer__fetch.wait.max.ms": "40", "producer__linger.ms": "2"}
    engine = start_engine(broker, tmp_path / "engine.log", transactions_topic="events",
                          app_topic="events", feedback_topic="events", profile_topic="events", **kinds)
    try:
        alerts = consume_all(broker, "alerts", expect=len(expected), timeout=120)
        dead = consume_all(broker, "dead_letter", expect=len(bad), timeout=60)
        prompts = consume_all(broker, "nba_prompts", expect=len(expected_prompts), timeout=60)
    finally:
        assert stop(engine) == 0, (tmp_path / "engine.log").read_text()[-3000:]
    assert "CONFWARN" not in (tmp_path / "engine.log").read_text()
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


# librdkafka's mock cluster (the second Kafka-protocol broker), run as its own process with
# ``python -m tests.mockbroker``. It does not answer CreateTopics: a metadata request creates a
# topic, with the mock's four partitions. Every event goes to partition 0 of one topic, so the
# engine reads them in the stream's order, as the replay does; the other partitions stay empty
# and are read too.


@pytest.fixture
def mock_broker() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.mockbroker"], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().decode().strip()
        if not address:
            pytest.fail(f"the mock cluster did not start (exit {proc.poll()})")
        yield address
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def produce_in_order(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """``values`` to partition 0 of ``topic``, in order."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value in values:
        while True:
            try:
                producer.produce(topic, value, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left undelivered"


def test_live_on_the_mock_cluster_equals_replay(mock_broker: str, sim_stream: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    from confluent_kafka import Producer

    events, _ = sim_stream
    lines = [line for line in events.read_bytes().splitlines() if line]
    creator = Producer({"bootstrap.servers": mock_broker})
    for topic in ("events", "alerts", "nba_prompts", "dead_letter"):
        assert creator.list_topics(topic, timeout=10).topics[topic].partitions  # created on the first request
    produce_in_order(mock_broker, "events", lines)
    replayed = replay(events, tmp_path / "replay")
    expected, expected_prompts = replayed.raw("alerts").splitlines(), replayed.raw("prompts").splitlines()
    assert expected and expected_prompts
    engine = start_engine(mock_broker, tmp_path / "engine.log", transactions_topic="events", app_topic="events",
                          feedback_topic="events", profile_topic="events",
                          **{"consumer__fetch.wait.max.ms": "10"})
    try:
        alerts = consume_all(mock_broker, "alerts", expect=len(expected), timeout=180)
        prompts = consume_all(mock_broker, "nba_prompts", expect=len(expected_prompts), timeout=60)
    finally:
        assert stop(engine) == 0, (tmp_path / "engine.log").read_text()[-3000:]
    assert "CONFWARN" not in (tmp_path / "engine.log").read_text()
    assert sorted(map(without_emitted_at, alerts), key=str) == sorted(map(without_emitted_at, expected), key=str)
    assert sorted(prompts) == sorted(expected_prompts)
    assert {orjson.loads(raw)["alert_id"] for raw in alerts} == {orjson.loads(raw)["alert_id"] for raw in expected}


@pytest.mark.parametrize("layout", ["two workers", "two processes"])
def test_four_topics_many_partitions_two_workers(broker: str, sim_stream: tuple[Path, Path],
                                                 tmp_path: Path, layout: str) -> None:
    """Three partitions a topic, read by two workers of one process or by two processes of one
    Bytewax cluster (``[engine] addresses`` and ``process_id``, as the StatefulSet runs them):
    every partition is read, the bad messages are dead-lettered once, and every alert comes
    out once."""
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
    if layout == "two workers":
        engines = {tmp_path / "engine.log": start_engine(broker, tmp_path / "engine.log", "--workers", "2")}
    else:
        addresses = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        engines = {tmp_path / f"engine-{i}.log": start_engine(
            broker, tmp_path / f"engine-{i}.log", "--workers", "1",
            env={"CRM__ENGINE__ADDRESSES": addresses, "CRM__ENGINE__PROCESS_ID": str(i)}) for i in range(2)}
    try:
        dead = consume_all(broker, "dead_letter", expect=len(bad), timeout=60)
        alerts = consume_all(broker, "alerts", timeout=90, idle=5.0)
        # the group's committed offsets (as kafka-consumer-groups shows them) reach every
        # partition's end while the engine runs
        total = sum(map(len, by_topic.values())) + len(bad)  # every message: offsets from 0, no gaps
        wait_for(lambda: sum(group_offsets(broker, list(by_topic)).values()) == total, timeout=30,
                 what="the committed offsets reaching the ends of the partitions")
    finally:
        assert stop(*engines.values()) == 0, "\n".join(log.read_text()[-3000:] for log in engines)
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


def test_a_10_mb_malformed_message_gives_a_bounded_dead_letter_and_the_engine_goes_on(
        broker: str, tmp_path: Path) -> None:
    """Two 10 MB malformed messages (binary, and UTF-8 text of 3-byte characters), then a
    customer's valid events: the engine keeps running, each dead letter on the topic holds a
    prefix of the payload with its size and SHA-256, and the valid events raise their alert."""
    import hashlib
    import time

    from confluent_kafka import Producer

    from tests.live_engine import history, takeover

    size = 10 * 2**20
    binary = b"\xff" + random.Random(5).randbytes(size - 1)  # not UTF-8: base64 grows it by a third
    text = ("\u4e2d" * (size // 3 + 1)).encode()  # UTF-8, a character every 3 bytes
    create_topics(broker, {"events": 1, "alerts": 1, "nba_prompts": 1, "dead_letter": 1})
    producer = Producer({"bootstrap.servers": broker, "message.max.bytes": 2 * size})
    reports: list[object] = []
    for value in (binary, text):
        producer.produce("events", value, on_delivery=lambda err, _: reports.append(err))
    assert producer.flush(60) == 0 and reports == [None, None], reports  # the broker takes 10 MB
    now = time.time()
    valid = [orjson.dumps(e) for e in (*history("c-big", "rm-big", now), *takeover("c-big", now))]
    log = tmp_path / "engine.log"
    engine = start_engine(broker, log, transactions_topic="events", app_topic="events",
                          feedback_topic="events", profile_topic="events")
    try:
        produce(broker, "events", valid)
        dead = consume_all(broker, "dead_letter", expect=2, timeout=60)
        alerts = consume_all(broker, "alerts", expect=1, timeout=60)
        assert engine.poll() is None, log.read_text()[-3000:]
    finally:
        code = stop(engine)
    assert code == 0, log.read_text()[-3000:]
    assert len(dead) == 2, log.read_text()[-3000:]
    assert [orjson.loads(a)["customer_id"] for a in alerts] == ["c-big"]
    bound = 64 * 1024
    letters = [orjson.loads(raw) for raw in dead]
    for raw, letter, original in zip(dead, letters, (binary, text), strict=True):
        assert len(raw) < bound * 4 // 3 + 1024, len(raw)
        assert letter["payload_truncated"] is True
        assert letter["payload_size"] == size if original is binary else len(text)
        assert letter["payload_sha256"] == hashlib.sha256(original).hexdigest()
        assert letter["source"] == {"topic": "events", "partition": 0, "offset": letter["source"]["offset"]}
    assert letters[0]["payload_encoding"] == "base64"
    assert base64.b64decode(letters[0]["payload"]) == binary[:bound]
    assert letters[1]["payload_encoding"] == "utf-8"
    assert letters[1]["payload"].encode() == text[:bound - bound % 3]  # cut at a character boundary
    assert not (tmp_path / REFUSED).exists()  # Kafka took every dead letter


def _letters(path: Path) -> list[DeadLetter]:
    return [DeadLetter(**orjson.loads(line)) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_a_record_the_producer_refuses_goes_to_the_sinks_dead_letters_and_the_sink_goes_on(
        broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With ``message.max.bytes`` at 2,000, ``produce()`` raises MSG_SIZE_TOO_LARGE for a
    5 KB alert: the alert goes whole to the sink's dead-letter file (counted, logged once
    with its id), the alerts before and after it reach the topic, and it is not left in
    flight, so a restart from the snapshot does not produce it again."""
    from prometheus_client import CollectorRegistry

    from ops.metrics import EngineMetrics
    from schemas.outputs import Reason
    from sinks.delivery import JsonlDeadLetters
    from sinks.kafka import ResumableKafkaSink
    from tests.test_delivery import make_alerts

    create_topics(broker, {"alerts": 1})
    alerts = make_alerts(6)
    huge = replace(alerts[2], reasons=(Reason("long", "x" * 5000, 1.0, 1.0),))
    alerts[2] = huge
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, sinks=("kafka_alerts",)).sink("kafka_alerts")
    config = {"bootstrap.servers": broker, "message.max.bytes": 2000}
    refused = tmp_path / "refused.jsonl"
    sink = ResumableKafkaSink(config, "alerts", JsonlDeadLetters(refused), metrics=metrics)
    sink.open()
    sink.write_batch(alerts[:4])
    sink.write_batch(alerts[4:])
    snapshot = sink.position()
    assert snapshot["pending"] == []
    sink.close()
    again = ResumableKafkaSink(config, "alerts", JsonlDeadLetters(refused))
    again.open(snapshot)
    again.close()
    on_topic = [orjson.loads(v)["alert_id"] for v in consume_all(broker, "alerts", expect=5, timeout=30)]
    assert on_topic == [a.alert_id for a in alerts if a is not huge]
    (letter,) = _letters(refused)
    assert letter.raw() == huge.to_bytes()
    assert letter.source == {"sink": "kafka", "topic": "alerts", "id": huge.alert_id}
    assert "MSG_SIZE_TOO_LARGE" in letter.reason and letter.reason.startswith("kafka topic alerts: refused")
    assert (sink.delivered, sink.failed, again.failed) == (5, 1, 0)
    assert registry.get_sample_value("crm_engine_sink_errors_total", {"sink": "kafka_alerts"}) == 1
    logged = [r for r in caplog.records if r.name == "sinks.kafka" and r.levelname == "ERROR"]
    assert len(logged) == 1 and getattr(logged[0], "alert_id", None) == huge.alert_id
    assert "x" * 100 not in logged[0].getMessage()  # the id, never the record


def test_a_failed_delivery_report_goes_to_the_dead_letters_and_leaves_nothing_in_flight(tmp_path: Path) -> None:
    """The broker frozen past ``message.timeout.ms``: librdkafka gives up on the records and
    their delivery reports fail; they go to the file and the snapshot holds none of them."""
    from sinks.delivery import JsonlDeadLetters
    from sinks.kafka import ResumableKafkaSink
    from tests.test_delivery import make_alerts

    refused = tmp_path / "refused.jsonl"
    with tansu_process(tmp_path) as (bootstrap, proc):
        create_topics(bootstrap, {"alerts": 1})
        sink = ResumableKafkaSink({"bootstrap.servers": bootstrap, "message.timeout.ms": 1000}, "alerts",
                                  JsonlDeadLetters(refused), flush_timeout_s=10)
        sink.open()
        alerts = make_alerts(3)
        proc.send_signal(signal.SIGSTOP)
        try:
            sink.write_batch(alerts)
            snapshot = sink.position()
        finally:
            proc.send_signal(signal.SIGCONT)
        sink.close()
    assert snapshot["pending"] == [] and sink.failed == 3
    letters = _letters(refused)
    assert sorted(letter.source["id"] for letter in letters) == [a.alert_id for a in alerts]
    assert all("delivery failed: _MSG_TIMED_OUT" in letter.reason for letter in letters)


def test_a_sink_whose_dead_letter_file_cannot_be_written_logs_counts_and_goes_on(
        broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The dead-letter file on a full disk (``/dev/full``): the refused record is logged at
    CRITICAL level and counted as lost, and the sink delivers the next records."""
    from prometheus_client import CollectorRegistry

    from ops.metrics import EngineMetrics
    from sinks.delivery import JsonlDeadLetters
    from sinks.kafka import KafkaSink

    create_topics(broker, {"dead_letter": 1})
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, sinks=("kafka_dead_letters",)).sink("kafka_dead_letters")
    full = JsonlDeadLetters("/dev/full")
    sink = KafkaSink({"bootstrap.servers": broker, "message.max.bytes": 1000}, "dead_letter", full, metrics=metrics)
    sink.open()
    small = DeadLetter.of(b"not json", "invalid JSON", {"topic": "events", "partition": 0, "offset": 1})
    large = DeadLetter.of(b"y" * 3000, "invalid JSON", {"topic": "events", "partition": 0, "offset": 2})
    sink.write_batch([small, large, small])
    sink.close()
    assert len(consume_all(broker, "dead_letter", expect=2, timeout=30)) == 2
    assert full.lost == 1
    assert registry.get_sample_value("crm_engine_sink_lost_total", {"sink": "kafka_dead_letters"}) == 1
    assert registry.get_sample_value("crm_engine_sink_errors_total", {"sink": "kafka_dead_letters"}) == 1
    critical = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert len(critical) == 1 and "dead letter of topic=events/partition=0/offset=2" in critical[0].getMessage()


def test_the_dead_letter_topic_sends_what_it_refuses_to_its_file(broker: str, tmp_path: Path) -> None:
    """A Redis or webhook sink's dead letters on a Kafka topic: a letter the producer refuses
    goes to the file, its reason saying why, and the others reach the topic."""
    from sinks.delivery import JsonlDeadLetters, KafkaDeadLetters

    create_topics(broker, {"sink_dead": 1})
    path = tmp_path / "fallback.jsonl"
    out = KafkaDeadLetters({"bootstrap.servers": broker, "message.max.bytes": 1000}, "sink_dead",
                           JsonlDeadLetters(path))
    letters = [DeadLetter.of(payload, "redis: buffer full", {"sink": "redis", "id": f"al-{i}"}, None)
               for i, payload in enumerate((b"{}", b"z" * 3000, b"{}"))]
    out.write(letters)
    out.close()
    assert [orjson.loads(v)["source"]["id"] for v in consume_all(broker, "sink_dead", expect=2)] == ["al-0", "al-2"]
    (kept,) = _letters(path)
    assert kept.source["id"] == "al-1" and kept.raw() == b"z" * 3000 and out.refused == 1
    assert kept.reason.startswith("redis: buffer full; dead-letter topic sink_dead refused it: MSG_SIZE_TOO_LARGE")
