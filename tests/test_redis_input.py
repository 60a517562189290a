"""The engine's Redis input stream (``[redis] input_stream``): events injected there are
processed like any source's, bad entries become dead letters, and the stream's cursor
lets the next run continue where this one stopped; with ``[redis] recent_events``, each
customer's latest events are kept in a capped list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from schemas.redis_keys import RedisKeys
from tests.conftest import ROOT, replay
from tests.live_engine import engine_settings, history, inject, live_engine, takeover, wait_for
from tests.services import RedisServer, redis_server

RI_IN, RG_IN, RS_IN = (RedisKeys("ri:").input_stream("feedback:in"), RedisKeys("rg:").input_stream("feedback:in"),
                       RedisKeys("rs:").input_stream("events"))


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def alerts(client: redis.Redis, prefix: str) -> list[dict]:
    return [orjson.loads(fields[b"data"]) for _, fields in client.xrange(RedisKeys(prefix).alerts())]


def test_injected_events_reach_the_engine_and_alert(redis_srv: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    settings = engine_settings(redis_srv.url, "ri:", tmp_path, recent_events=3)
    now = time.time()
    client.xadd(RI_IN, {"data": b'{"kind":"transaction"}'})  # before the start: not read
    with live_engine(settings):
        time.sleep(0.5)
        inject(client, settings, *history("c-in-1", "rm001", now))
        client.xadd(RI_IN, {"data": b"not json"})
        inject(client, settings, *takeover("c-in-1", now))
        found = wait_for(lambda: alerts(client, "ri:"))
        assert found[0]["customer_id"] == "c-in-1" and found[0]["type"] == "account_takeover"
        assert found[0]["rm_id"] == "rm001"
        # the engine took the fraud label (a feedback event) from the same stream
        inject(client, settings, {"kind": "feedback", "event_id": "fb-1", "ts": found[0]["event_ts"],
                                  "customer_id": "c-in-1", "label": "fraud", "ref_event_id": "c-in-1-steal",
                                  "ref_alert_id": found[0]["alert_id"]})
        wait_for(lambda: client.get(RI_IN + ":cursor") == client.xrevrange(RI_IN, count=1)[0][0])
    # the audit trail holds the alert; dead letters of the Redis sink: none
    audit = [orjson.loads(e) for e in client.lrange(RedisKeys("ri:").audit_log("audit"), 0, -1)]
    assert [e["id"] for e in audit if e["kind"] == "alert"] == [found[0]["alert_id"]]
    # each customer's 3 latest valid events, newest first, summarised (no device ids)
    recent = [orjson.loads(raw) for raw in client.lrange(RedisKeys("ri:").customer_events("c-in-1"), 0, -1)]
    assert [e["event_id"] for e in recent] == ["fb-1", "c-in-1-steal", "c-in-1-reset"]
    assert recent[0]["label"] == "fraud" and recent[1]["amount"] == 48_000.0
    assert recent[1]["counterparty_id"] == "p-unknown" and "device_id" not in recent[1]
    # the next run starts from the cursor: nothing read twice, a new entry read
    with live_engine(settings):
        inject(client, settings, *history("c-in-2", "rm002", now), *takeover("c-in-2", now))
        wait_for(lambda: len(alerts(client, "ri:")) >= 2)
        time.sleep(0.3)
    assert [a["customer_id"] for a in alerts(client, "ri:")] == ["c-in-1", "c-in-2"]
    assert all(client.llen(RedisKeys("ri:").customer_events(c)) == 3 for c in ("c-in-1", "c-in-2"))


def test_redis_as_the_only_source_gives_the_replays_alerts(redis_srv: RedisServer, sim_stream: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """``[engine] source = "redis"``: ``run.py live`` reads every kind of event from the Redis
    input stream, with no Kafka anywhere; the alerts on the Redis alerts stream are exactly
    the replay's, and the bad entries are in the input dead-letter file with their ids."""
    events, _ = sim_stream
    lines = [line for line in events.read_bytes().splitlines() if line]
    client = redis.Redis.from_url(redis_srv.url)
    bad = {3: b"not json", len(lines) // 2: b'{"kind":"transaction","event_id":"x"}'}
    pipe = client.pipeline(transaction=False)
    for i, line in enumerate(lines):
        if i in bad:
            pipe.xadd(RS_IN, {"data": bad[i]})
        pipe.xadd(RS_IN, {"data": line})
    pipe.execute()
    client.set(RS_IN + ":cursor", "0-0")  # read the stream from its start
    expected = replay(events, tmp_path / "replay").raw("alerts").splitlines()
    assert expected
    dead_file = tmp_path / "dead.jsonl"
    env = {**os.environ, "CRM__ENGINE__SOURCE": "redis", "CRM__REDIS__ENABLED": "true",
           "CRM__REDIS__URL": redis_srv.url, "CRM__REDIS__KEY_PREFIX": "rs:", "CRM__REDIS__INPUT_STREAM": "events",
           "CRM__REDIS__INPUT_DEAD_LETTER_PATH": str(dead_file), "CRM__ENGINE__EPOCH_INTERVAL_S": "0.5",
           "CRM__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # no broker: none may be needed
    log = tmp_path / "engine.log"
    with open(log, "wb") as stderr:
        engine = subprocess.Popen([sys.executable, "run.py", "live", "--quiet"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            got = wait_for(lambda: (found := alerts(client, "rs:")) and len(found) >= len(expected) and found,
                           timeout=120, every=0.5)
        finally:
            engine.send_signal(signal.SIGINT)
            assert engine.wait(30) == 0, log.read_text()[-3000:]

    def without_emitted_at(record: dict) -> dict:
        return {k: v for k, v in record.items() if k != "emitted_at"}

    assert sorted(map(without_emitted_at, got), key=str) == sorted(
        (without_emitted_at(orjson.loads(line)) for line in expected), key=str)
    letters = [orjson.loads(line) for line in dead_file.read_bytes().splitlines()]
    assert len(letters) == len(bad) and all(letter["source"]["stream"] == RS_IN for letter in letters)
    assert b"rdkafka" not in log.read_bytes()


# -- consumer groups ([redis] input_group) ----------------------------------------------------


def _event(i: int) -> bytes:
    return orjson.dumps({"kind": "transaction", "event_id": f"g-{i}", "ts": "2026-01-05T10:00:00Z",
                         "customer_id": "c-g", "amount": 10.0 + i})


def _group_part(url: str, key: str, consumer: str = "c1", telemetry: object = None) -> object:
    from flows.sources import Group, RedisStreamSource

    source = RedisStreamSource(url, key, batch_size=4, group=Group("engine", consumer),
                               telemetry=telemetry)  # type: ignore[arg-type]
    return source.build_part("events_in", f"redis:{key}", None)


def _ids(batch: list) -> list[str]:
    return [item.event.event_id for item in batch]


def test_a_group_member_acknowledges_at_the_epochs_end_and_rereads_what_it_had_not(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    part = _group_part(redis_srv.url, "g:in")  # the group is created at the stream's end
    for i in range(6):
        client.xadd("g:in", {"data": _event(i)})
    assert _ids(part.next_batch()) == ["g-0", "g-1", "g-2", "g-3"]  # type: ignore[attr-defined]
    assert client.xpending("g:in", "engine")["pending"] == 4
    part.snapshot()  # type: ignore[attr-defined]  # the epoch that processed them ended
    assert client.xpending("g:in", "engine")["pending"] == 0
    assert _ids(part.next_batch()) == ["g-4", "g-5"]  # type: ignore[attr-defined]
    # The process dies before the epoch ends: g-4 and g-5 stay pending, and the same consumer
    # reads them again first after the restart, then new entries.
    client.xadd("g:in", {"data": _event(6)})
    restarted = _group_part(redis_srv.url, "g:in")
    assert _ids(restarted.next_batch()) == ["g-4", "g-5"]  # type: ignore[attr-defined]
    assert _ids(restarted.next_batch()) == ["g-6"]  # type: ignore[attr-defined]
    restarted.snapshot()  # type: ignore[attr-defined]
    assert client.xpending("g:in", "engine")["pending"] == 0
    # A pending entry trimmed from the stream before it was processed is a dead letter, not lost.
    client.xadd("g:in", {"data": _event(7)})
    assert _ids(restarted.next_batch()) == ["g-7"]  # type: ignore[attr-defined]
    client.xtrim("g:in", maxlen=0)
    letters = _group_part(redis_srv.url, "g:in").next_batch()  # type: ignore[attr-defined]
    assert [letter.reason for letter in letters] == ["entry deleted from the stream before it was processed"]


def test_a_group_members_lag_is_exported(redis_srv: RedisServer) -> None:
    import threading

    from prometheus_client import CollectorRegistry

    from ops import EngineMetrics, Telemetry
    from ops.health import Readiness

    registry = CollectorRegistry()
    telemetry = Telemetry(EngineMetrics(registry, ("g:lag",)), Readiness(threading.Event()))
    client = redis.Redis.from_url(redis_srv.url)
    part = _group_part(redis_srv.url, "g:lag", telemetry=telemetry)
    for i in range(10):
        client.xadd("g:lag", {"data": _event(i)})
    part.next_batch()  # type: ignore[attr-defined]
    part._lag_due = 0.0  # type: ignore[attr-defined]  # report now, not a second later
    part.next_batch()  # type: ignore[attr-defined]

    def lag() -> float | None:
        return registry.get_sample_value("crm_engine_source_consumer_lag_messages",
                                         {"topic": "g:lag", "partition": "0"})
    assert lag() == 10.0  # after the second read: 8 read and pending, 2 not delivered yet
    polled = registry.get_sample_value("crm_engine_source_last_poll_timestamp_seconds")
    assert polled is not None and abs(polled - time.time()) < 5  # the dataflow's heartbeat
    part.snapshot()  # type: ignore[attr-defined]
    part._lag_due = 0.0  # type: ignore[attr-defined]
    part.next_batch()  # type: ignore[attr-defined]
    assert lag() == 2.0  # 8 acknowledged; the last 2, just read, pending


def test_the_live_engine_reads_as_a_group_and_acknowledges(redis_srv: RedisServer, tmp_path: Path) -> None:
    from dataclasses import replace

    client = redis.Redis.from_url(redis_srv.url)
    settings = engine_settings(redis_srv.url, "rg:", tmp_path)
    settings = replace(settings, redis=replace(settings.redis, input_group="crm-engine", input_consumer="engine-0"))
    now = time.time()
    with live_engine(settings):
        wait_for(lambda: client.exists(RG_IN), what="the group and its stream created")
        inject(client, settings, *history("c-g-1", "rm001", now), *takeover("c-g-1", now))
        found = wait_for(lambda: [a for a in alerts(client, "rg:") if a["customer_id"] == "c-g-1"],
                         what="the takeover's alert")
        assert found[0]["type"] == "account_takeover"
        wait_for(lambda: client.xpending(RG_IN, "crm-engine")["pending"] == 0,
                 what="every entry acknowledged at an epoch's end")
    groups = client.xinfo_groups(RG_IN)
    assert [g["name"] for g in groups] == [b"crm-engine"] and groups[0]["consumers"] == 1
    assert not client.exists(RG_IN + ":cursor")  # the group, not a cursor, keeps the position
