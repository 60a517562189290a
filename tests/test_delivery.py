"""Redis and webhook sinks against real servers: routing, idempotency, outages,
back-pressure and dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from schemas.events import event_from_obj
from schemas.outputs import Alert, EventSummary, Reason
from schemas.redis_keys import LAYOUT_VERSION, RedisKeys
from sinks.delivery import JsonlDeadLetters, RetryPolicy
from sinks.redis import LAYOUT_RECHECK_S, RedisEventsSink, RedisSink
from sinks.webhook import WebhookSink
from tests.services import Receiver, RedisServer, redis_server, wait_until


def make_alerts(n: int, start: int = 0, customers: int = 3) -> list[Alert]:
    return [Alert(f"al-{i:05d}", "suspicious_transaction", "high", 0.9, f"c{i % customers}", "rm1",
                  f"e{i}", "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:34.000Z",
                  (Reason("large_amount", f"amount {i} is large", float(i), 0.5),), "m1")
            for i in range(start, start + n)]


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def stream_ids(client: redis.Redis, key: str) -> list[str]:
    return [fields[b"id"].decode() for _, fields in client.xrange(key)]


def dead_letters(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_redis_sink_routes_alerts_once(redis_srv: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    pubsub = client.pubsub()
    pubsub.subscribe("t1:alerts:live")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="t1:")
    sink.open()
    alerts = make_alerts(10)
    sink.write_batch(alerts[:6])
    sink.write_batch(alerts[3:])  # 3..5 again: a retry or a replay after recovery
    sink.close()
    assert stream_ids(client, RedisKeys("t1:").alerts()) == [a.alert_id for a in alerts]
    assert sink.delivered == 13 and sink.duplicates == 3 and sink.dead_lettered == 0
    customer = client.hgetall(RedisKeys("t1:").customer("c1"))
    assert float(customer[b"fraud_score"]) == 0.9
    assert {k for k in customer if k.startswith(b"open:")} == {
        f"open:{a.alert_id}".encode() for a in alerts if a.customer_id == "c1"}
    live = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        live.append(orjson.loads(message["data"])["alert_id"])
    assert live == [a.alert_id for a in alerts]
    # A restarted sink resumes what was undelivered at its snapshot; replayed ids are skipped.
    again = RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="t1:")
    again.open(resume=alerts[8:])
    again.write_batch(make_alerts(2, start=9))
    again.close()
    assert stream_ids(client, RedisKeys("t1:").alerts()) == [a.alert_id for a in alerts] + ["al-00010"]
    assert again.duplicates == 3


def make_summaries(n: int, start: int = 0, customers: int = 2) -> list[EventSummary]:
    summaries = [EventSummary.of(event_from_obj({
        "kind": "transaction", "event_id": f"e{i:04d}", "ts": f"2026-01-05T11:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "customer_id": f"c{i % customers}", "amount": float(i), "counterparty_id": "p1", "device_id": "d1"}))
        for i in range(start, start + n)]
    return [s for s in summaries if s is not None]


def test_recent_events_are_capped_newest_first_and_replays_are_skipped(redis_srv: RedisServer,
                                                                       tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_srv.url)

    def listed(customer: str) -> list[str]:
        held = client.lrange(RedisKeys("t5:").customer_events(customer), 0, -1)
        return [orjson.loads(raw)["event_id"] for raw in held]

    sink = RedisEventsSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), 4, prefix="t5:")
    sink.open()
    events = make_summaries(12)
    sink.write_batch(events[:8])
    sink.write_batch(events[6:])  # 6 and 7 again: a retry or the replay after recovery
    sink.close()
    assert listed("c0") == ["e0010", "e0008", "e0006", "e0004"]
    assert listed("c1") == ["e0011", "e0009", "e0007", "e0005"]
    assert sink.duplicates == 2 and sink.dead_lettered == 0
    # a restart resumes what was undelivered at its snapshot and the replay sends the tail
    # again: still in the lists, so not pushed twice
    again = RedisEventsSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), 4, prefix="t5:")
    again.open(resume=events[10:])
    again.write_batch([*events[9:], *make_summaries(1, start=12)])
    again.close()
    assert listed("c0") == ["e0012", "e0010", "e0008", "e0006"]
    assert listed("c1") == ["e0011", "e0009", "e0007", "e0005"]
    assert again.duplicates == 5  # 10 and 11 resumed, then 9, 10 and 11 replayed
    summary = orjson.loads(client.lindex(RedisKeys("t5:").customer_events("c0"), 0))
    assert summary == {"event_id": "e0012", "customer_id": "c0", "kind": "transaction", "ts": "2026-01-05T11:00:12Z",
                       "amount": 12.0, "currency": "CNY", "direction": "debit", "counterparty_id": "p1",
                       "schema_version": summary["schema_version"]}


def test_redis_stream_is_bounded(redis_srv: RedisServer, tmp_path: Path) -> None:
    from sinks.redis import RedisLimits

    sink = RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="t2:",
                     limits=RedisLimits(alerts_maxlen=100))
    sink.open()
    for start in range(0, 2000, 100):
        sink.write_batch(make_alerts(100, start=start))
    sink.close()
    length = redis.Redis.from_url(redis_srv.url).xlen(RedisKeys("t2:").alerts())
    assert 100 <= length < 400, length  # MAXLEN ~ trims whole macro nodes


def test_redis_outage_delays_but_loses_nothing(redis_srv: RedisServer, tmp_path: Path) -> None:
    """Redis frozen for a while mid-stream: writes never block, every alert arrives once."""
    dead = tmp_path / "dead.jsonl"
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(dead), prefix="t3:", socket_timeout_s=0.5,
                     policy=RetryPolicy(base_s=0.1, max_s=1.0, budget_s=120))
    sink.open()
    alerts = make_alerts(600)
    sink.write_batch(alerts[:200])
    assert wait_until(lambda: sink.delivered == 200, 10)
    redis_srv.pause()
    try:
        started = time.monotonic()
        for i in range(200, 600, 50):
            sink.write_batch(alerts[i:i + 50])
        assert time.monotonic() - started < 0.5, "write_batch blocked while Redis was down"
        time.sleep(5)
        assert sink.delivered == 200 and sink.buffer_depth == 400 and sink.retried > 0
    finally:
        redis_srv.resume()
    assert wait_until(lambda: sink.buffer_depth == 0, 30)
    sink.close()
    ids = stream_ids(redis.Redis.from_url(redis_srv.url), RedisKeys("t3:").alerts())
    assert ids == [a.alert_id for a in alerts]
    assert dead_letters(dead) == []


def test_a_redis_error_is_never_taken_for_a_duplicate(redis_srv: RedisServer, tmp_path: Path) -> None:
    """A key of the wrong type where a customer's hash goes (another writer's, or an older key
    layout's): the record is refused with the reason, nothing of it is written (no delivered
    marker, no stream entry), the rest of the batch is delivered, and once the key is gone the
    same record is written, not skipped as already delivered."""
    client = redis.Redis.from_url(redis_srv.url)
    keys = RedisKeys("t6:")
    client.rpush(keys.customer("c1"), "a list where the customer's hash goes")
    dead = tmp_path / "dead.jsonl"
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(dead), prefix="t6:", policy=RetryPolicy(base_s=0.01, max_s=0.05))
    sink.open()
    alerts = make_alerts(6)
    sink.write_batch(alerts)
    sink.close()
    refused = {a.alert_id for a in alerts if a.customer_id == "c1"}
    assert sink.duplicates == 0 and sink.dead_lettered == len(refused) == 2
    assert sink.delivered == 4
    letters = dead_letters(dead)
    assert {letter["source"]["id"] for letter in letters} == refused
    assert all("WRONGTYPE" in letter["reason"] for letter in letters)
    assert stream_ids(client, RedisKeys("t6:").alerts()) == [a.alert_id for a in alerts if a.alert_id not in refused]
    assert not any(client.exists(keys.customer_delivered("c1", rid)) or client.exists(keys.delivered(rid))
                   for rid in refused)
    client.delete(keys.customer("c1"))
    again = RedisSink(redis_srv.url, JsonlDeadLetters(dead), prefix="t6:")
    again.open()
    again.write_batch(alerts)
    again.close()
    assert again.duplicates == 4 and again.dead_lettered == 0
    assert float(client.hget(keys.customer("c1"), "fraud_score")) == 0.9
    assert sorted(stream_ids(client, RedisKeys("t6:").alerts())) == sorted(a.alert_id for a in alerts)


def test_a_redis_prefix_of_another_key_layout_is_refused(redis_srv: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    client.set("t7:layout", "1")
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="t7:")
    events = RedisEventsSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead-events.jsonl"), 4, prefix="t7:")
    sink.open()
    events.open()
    sink.write_batch(make_alerts(3))
    events.write_batch(make_summaries(3))
    sink.close()
    events.close()
    assert sink.dead_lettered == 3 and events.dead_lettered == 3
    assert "layout 1" in dead_letters(tmp_path / "dead.jsonl")[0]["reason"]
    assert client.keys("t7:*") == [b"t7:layout"]


def test_on_one_node_an_alerts_two_writes_take_one_round_trip(redis_srv: RedisServer, tmp_path: Path) -> None:
    """A single Redis: a batch of alerts (each its customer's hash, then the alerts stream) in
    one pipelined round trip, the stream write guarded by the hash write's marker. With the
    alerts stream replaced by a list, every alert's hash is still written and its stream
    write refused; with a customer's hash replaced by a list, nothing of that customer's
    alerts is written, and the others' are."""
    client = redis.Redis.from_url(redis_srv.url)
    keys = RedisKeys("t9:")
    dead = tmp_path / "dead.jsonl"
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(dead), prefix="t9:")
    sink.connect()
    calls: list[int] = []
    script = sink._call_script
    sink._call_script = lambda batch: calls.append(len(batch)) or script(batch)  # type: ignore[method-assign]
    alerts = make_alerts(6)
    assert sink.deliver(alerts) is None
    assert calls == [12]  # six hash writes, then six stream writes, in one pipeline
    assert stream_ids(client, keys.alerts()) == [a.alert_id for a in alerts]
    assert sink.deliver(alerts) is None and sink.duplicates == 6 and calls == [12, 12]
    # the stream write refused: the hashes are written all the same
    client.delete(keys.alerts())
    client.rpush(keys.alerts(), "a list where the alerts stream goes")
    later = make_alerts(4, start=100)
    refused = sink.deliver(later)
    assert refused is not None and [r.alert_id for r, _ in refused] == [a.alert_id for a in later]
    assert all("WRONGTYPE" in reason for _, reason in refused)
    assert all(client.exists(keys.customer_delivered(a.customer_id, a.alert_id)) for a in later)
    # the hash write refused: that customer's stream write is not made either
    client.delete(keys.alerts())
    client.delete(keys.customer("c1"))
    client.rpush(keys.customer("c1"), "a list where the customer's hash goes")
    last = make_alerts(6, start=200)
    refused = sink.deliver(last)
    assert refused is not None and {r.customer_id for r, _ in refused} == {"c1"}
    assert stream_ids(client, keys.alerts()) == [a.alert_id for a in last if a.customer_id != "c1"]
    assert not any(client.exists(keys.delivered(a.alert_id)) for a in last if a.customer_id == "c1")
    sink.disconnect()


def test_a_layout_found_right_is_read_again_after_a_while(redis_srv: RedisServer, tmp_path: Path) -> None:
    """The layout check is a round trip of its own: once found right it is trusted for
    ``LAYOUT_RECHECK_S``, then read again, so a prefix taken over by another layout meanwhile
    is refused from then on."""
    client = redis.Redis.from_url(redis_srv.url)
    clock = [1000.0]
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="t8:")
    sink._monotonic = lambda: clock[0]
    sink.connect()
    alerts = make_alerts(3)
    assert sink.deliver(alerts[:1]) is None and client.get("t8:layout") == LAYOUT_VERSION.encode()
    client.set("t8:layout", "1")
    clock[0] += LAYOUT_RECHECK_S - 1
    assert sink.deliver(alerts[1:2]) is None  # trusted: no round trip for the check
    clock[0] += 2
    refused = sink.deliver(alerts[2:])
    assert refused is not None and "layout 1" in refused[0][1]
    sink.disconnect()


def test_buffer_overflow_goes_to_the_dead_letter(redis_srv: RedisServer, tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    sink = RedisSink(redis_srv.url, JsonlDeadLetters(dead), prefix="t4:", socket_timeout_s=0.3,
                     capacity=50, policy=RetryPolicy(base_s=0.05, max_s=0.2, budget_s=60))
    sink.open()
    redis_srv.pause()
    try:
        alerts = make_alerts(80)
        sink.write_batch(alerts)
        assert sink.dead_lettered == 30 and sink.buffer_depth == 50
    finally:
        redis_srv.resume()
    assert wait_until(lambda: sink.buffer_depth == 0, 30)
    sink.close()
    letters = dead_letters(dead)
    assert [letter["source"]["id"] for letter in letters] == [a.alert_id for a in alerts[50:]]
    assert all("buffer full" in letter["reason"] for letter in letters)
    assert orjson.loads(letters[0]["payload"])["alert_id"] == "al-00050"
    assert stream_ids(redis.Redis.from_url(redis_srv.url), RedisKeys("t4:").alerts()) == [
        a.alert_id for a in alerts[:50]]


def test_webhook_survives_500s_and_timeouts(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    alerts = make_alerts(30)
    with Receiver(fail=12, stall_every=7, stall_s=0.6) as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(dead), fmt="wecom", timeout_s=0.3,
                           policy=RetryPolicy(base_s=0.02, max_s=0.2, budget_s=60))
        sink.open()
        sink.write_batch(alerts)
        assert wait_until(lambda: sink.buffer_depth == 0, 60)
        sink.close()
    assert receiver.order == [a.alert_id for a in alerts]  # in order, each once by key
    assert sink.failed >= 12 and sink.retried == sink.failed and sink.dead_lettered == 0
    message = orjson.loads(receiver.received["al-00003"])
    assert message["msgtype"] == "markdown"
    assert "**<font color=\"warning\">HIGH</font> suspicious_transaction**" in message["markdown"]["content"]
    assert "amount 3 is large" in message["markdown"]["content"]
    assert dead_letters(dead) == []


def test_webhook_dead_letters_after_its_retry_budget(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    with Receiver(fail=10**6) as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(dead),
                           policy=RetryPolicy(base_s=0.01, max_s=0.05, budget_s=0.5))
        sink.open()
        sink.write_batch(make_alerts(2))
        assert wait_until(lambda: sink.dead_lettered == 2, 10)
        sink.close()
    letters = dead_letters(dead)
    assert [letter["source"] for letter in letters] == [{"sink": "webhook", "id": "al-00000"},
                                                        {"sink": "webhook", "id": "al-00001"}]
    assert all("undelivered after" in letter["reason"] and "HTTP 500" in letter["reason"] for letter in letters)
    assert sink.delivered == 0 and receiver.received == {}


def test_webhook_client_error_is_refused_at_once(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    with Receiver(fail=1, status=400) as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(dead), policy=RetryPolicy(budget_s=60))
        sink.open()
        sink.write_batch(make_alerts(2))
        assert wait_until(lambda: sink.delivered == 1, 10)
        sink.close()
    assert [letter["source"]["id"] for letter in dead_letters(dead)] == ["al-00000"]
    assert "HTTP 400" in dead_letters(dead)[0]["reason"] and sink.retried == 0
    assert orjson.loads(receiver.received["al-00001"])["alert_id"] == "al-00001"  # generic JSON


def test_wecom_error_code_is_refused(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    with Receiver(reply=b'{"errcode":93000,"errmsg":"invalid webhook url"}') as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(dead), fmt="wecom")
        sink.open()
        sink.write_batch(make_alerts(1))
        assert wait_until(lambda: sink.dead_lettered == 1, 10)
        sink.close()
    assert "errcode 93000" in dead_letters(dead)[0]["reason"]


def test_a_refused_record_whose_dead_letter_cannot_be_written_is_logged_counted_and_the_sink_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The dead-letter file's directory cannot be created (read-only disk, or as here a file
    in the way): the webhook's refused alert is logged at CRITICAL level with its id and
    counted as lost, and the delivery thread goes on with the next alert."""
    from prometheus_client import CollectorRegistry

    from ops import Readiness, Telemetry
    from ops.metrics import EngineMetrics

    (tmp_path / "in-the-way").write_text("")
    out = JsonlDeadLetters(tmp_path / "in-the-way" / "dead.jsonl")
    registry = CollectorRegistry()
    telemetry = Telemetry(EngineMetrics(registry), Readiness(threading.Event()))
    with Receiver(fail=1, status=400) as receiver:
        sink = telemetry.metered("webhook", lambda: WebhookSink(receiver.url, out, policy=RetryPolicy(budget_s=60)))()
        sink.open()
        sink.write_batch(make_alerts(2))
        assert wait_until(lambda: "al-00001" in receiver.received, 10)
        sink.close()
    assert out.lost == 1
    assert registry.get_sample_value("crm_engine_sink_lost_total", {"sink": "webhook"}) == 1
    critical = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert len(critical) == 1 and "1 dead letters LOST" in critical[0] and "al-00000" in critical[0]


def test_dead_letters_after_a_cut_line_start_on_a_new_line(tmp_path: Path) -> None:
    """A write that failed half-way (a full disk) may leave a cut line: the next letters
    start on a line of their own, so every whole line still parses."""
    from schemas.outputs import DeadLetter

    path = tmp_path / "dead.jsonl"
    path.write_bytes(b'{"reason":"cut sh')
    out = JsonlDeadLetters(path)
    out.write([DeadLetter.of(b"x", "r", {"id": f"al-{i}"}) for i in range(2)])
    out.close()
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"reason":"cut sh' and [orjson.loads(line)["source"]["id"] for line in lines[1:]] == [
        "al-0", "al-1"]
    many = JsonlDeadLetters("/dev/full")  # every write fails: no space left on the device
    many.write([DeadLetter.of(b"x", "r", {"id": f"al-{i}"}) for i in range(30)])
    assert many.lost == 30


def test_retries_dead_letters_and_buffer_reach_the_sink_metrics(tmp_path: Path) -> None:
    """Through ``ops.MeteredSink`` (as the live modes build sinks): the webhook's retried
    attempts, its dead-lettered records and its buffer depth are Prometheus samples."""
    from prometheus_client import CollectorRegistry

    from ops import Readiness, Telemetry
    from ops.metrics import EngineMetrics

    registry = CollectorRegistry()
    telemetry = Telemetry(EngineMetrics(registry), Readiness(threading.Event()))
    sample = lambda name: registry.get_sample_value(name, {"sink": "webhook"})  # noqa: E731
    with Receiver(fail=10**6) as receiver:
        build = telemetry.metered("webhook", lambda: WebhookSink(
            receiver.url, JsonlDeadLetters(tmp_path / "dead.jsonl"),
            policy=RetryPolicy(base_s=0.01, max_s=0.05, budget_s=0.6)))
        sink = build()
        sink.open()
        sink.write_batch(make_alerts(3))
        assert sample("crm_engine_sink_buffered_records") >= 1
        assert wait_until(lambda: sample("crm_engine_sink_errors_total") == 3, 20)
        sink.close()
    assert sample("crm_engine_sink_retries_total") >= 3
    assert sample("crm_engine_sink_buffered_records") == 0
    assert sample("crm_engine_sink_records_total") == 3


def test_kafka_alerts_survive_a_second_crash_before_the_replay_catches_up(tmp_path: Path) -> None:
    """Run A delivers 0-19 but its last snapshot is after 9; run B resumes from it, reads
    back 10-19, skips 10-14 of its replay, snapshots and dies; run C resumes from B's
    snapshot and replays 15-24. Every id is on the topic once: C skips 15-19 although
    they were delivered before B's snapshot offsets."""
    from sinks.kafka import ResumableKafkaSink
    from tests.brokers import consume_all, create_topics, tansu_broker

    alerts = make_alerts(25)
    with tansu_broker(tmp_path) as broker:
        create_topics(broker, {"alerts": 1})
        config = {"bootstrap.servers": broker}
        a = ResumableKafkaSink(config, "alerts", JsonlDeadLetters(tmp_path / "refused.jsonl"))
        a.open()
        a.write_batch(alerts[:10])
        snapshot_a = a.position()
        a.write_batch(alerts[10:20])
        a.position()  # everything delivered; then run A dies without a snapshot
        b = ResumableKafkaSink(config, "alerts", JsonlDeadLetters(tmp_path / "refused.jsonl"))
        b.open(snapshot_a)
        b.write_batch(alerts[10:15])
        snapshot_b = b.position()
        assert b.skipped == 5
        c = ResumableKafkaSink(config, "alerts", JsonlDeadLetters(tmp_path / "refused.jsonl"))
        c.open(snapshot_b)
        c.write_batch(alerts[15:25])
        c.close()
        ids = [orjson.loads(v)["alert_id"] for v in consume_all(broker, "alerts", expect=25, timeout=30, idle=2)]
    assert c.skipped == 5
    assert sorted(ids) == [a.alert_id for a in alerts]
    assert not (tmp_path / "refused.jsonl").exists()


def test_webhook_requests_are_signed_and_verifiable(tmp_path: Path) -> None:
    from schemas.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

    alerts = make_alerts(3)
    with Receiver() as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), signing_secret=b"s3cret")
        sink.open()
        sink.write_batch(alerts)
        assert wait_until(lambda: sink.buffer_depth == 0, 30)
        sink.close()
    assert len(receiver.log) == 3
    for _, headers, body in receiver.log:
        stamp, signature = headers[TIMESTAMP_HEADER.lower()], headers[SIGNATURE_HEADER.lower()]
        assert verify(b"s3cret", stamp, body, signature)
        assert not verify(b"other", stamp, body, signature)  # another secret
        assert not verify(b"s3cret", stamp, body.replace(b"al-", b"xx-"), signature)  # a changed body
        assert not verify(b"s3cret", stamp, body, signature, now=int(stamp) + 600)  # replayed 10 min later


def test_webhook_waits_as_long_as_retry_after_says(tmp_path: Path) -> None:
    with Receiver(fail=1, status=429, retry_after="1") as receiver:
        sink = WebhookSink(receiver.url, JsonlDeadLetters(tmp_path / "dead.jsonl"),
                           policy=RetryPolicy(base_s=0.01, max_s=0.02, budget_s=30))
        sink.open()
        sink.write_batch(make_alerts(1))
        assert wait_until(lambda: sink.buffer_depth == 0, 30)
        sink.close()
    (first, _, _), (second, _, _) = receiver.log
    assert second - first >= 0.95  # not the 10-20 ms backoff
    assert sink.retried == 1 and sink.dead_lettered == 0
