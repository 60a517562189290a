"""The engine's Redis input stream (``[redis] input_stream``): events injected there are
processed like any source's, bad entries become dead letters, and the stream's cursor
lets the next run continue where this one stopped; with ``[redis] recent_events``, each
customer's latest events are kept in a capped list."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from tests.live_engine import engine_settings, history, inject, live_engine, takeover, wait_for
from tests.services import RedisServer, redis_server


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def alerts(client: redis.Redis, prefix: str) -> list[dict]:
    return [orjson.loads(fields[b"data"]) for _, fields in client.xrange(f"{prefix}alerts")]


def test_injected_events_reach_the_engine_and_alert(redis_srv: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    settings = engine_settings(redis_srv.url, "ri:", tmp_path, recent_events=3)
    now = time.time()
    client.xadd("ri:feedback:in", {"data": b'{"kind":"transaction"}'})  # before the start: not read
    with live_engine(settings):
        time.sleep(0.5)
        inject(client, settings, *history("c-in-1", "rm001", now))
        client.xadd("ri:feedback:in", {"data": b"not json"})
        inject(client, settings, *takeover("c-in-1", now))
        found = wait_for(lambda: alerts(client, "ri:"))
        assert found[0]["customer_id"] == "c-in-1" and found[0]["type"] == "account_takeover"
        assert found[0]["rm_id"] == "rm001"
        # the engine took the fraud label (a feedback event) from the same stream
        inject(client, settings, {"kind": "feedback", "event_id": "fb-1", "ts": found[0]["event_ts"],
                                  "customer_id": "c-in-1", "label": "fraud", "ref_event_id": "c-in-1-steal",
                                  "ref_alert_id": found[0]["alert_id"]})
        wait_for(lambda: client.get("ri:feedback:in:cursor") == client.xrevrange("ri:feedback:in", count=1)[0][0])
    # the audit trail holds the alert; dead letters of the Redis sink: none
    audit = [orjson.loads(e) for e in client.lrange("ri:audit", 0, -1)]
    assert [e["id"] for e in audit if e["kind"] == "alert"] == [found[0]["alert_id"]]
    # each customer's 3 latest valid events, newest first, summarised (no device ids)
    recent = [orjson.loads(raw) for raw in client.lrange("ri:customer:c-in-1:events", 0, -1)]
    assert [e["event_id"] for e in recent] == ["fb-1", "c-in-1-steal", "c-in-1-reset"]
    assert recent[0]["label"] == "fraud" and recent[1]["amount"] == 48_000.0
    assert recent[1]["counterparty_id"] == "p-unknown" and "device_id" not in recent[1]
    # the next run starts from the cursor: nothing read twice, a new entry read
    with live_engine(settings):
        inject(client, settings, *history("c-in-2", "rm002", now), *takeover("c-in-2", now))
        wait_for(lambda: len(alerts(client, "ri:")) >= 2)
        time.sleep(0.3)
    assert [a["customer_id"] for a in alerts(client, "ri:")] == ["c-in-1", "c-in-2"]
    assert client.llen("ri:customer:c-in-1:events") == 3 and client.llen("ri:customer:c-in-2:events") == 3
