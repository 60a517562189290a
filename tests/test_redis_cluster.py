"""The engine and the dashboard on a real Redis Cluster (three masters started by the tests)
and behind a real Sentinel: the key layout's hash tags keep every script, transaction and
multi-key command in one slot (no CROSSSLOT), writes stay idempotent, and one customer's
keys share a slot while customers spread over the masters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.cluster

from config.settings import ConfigError, RedisSettings
from schemas.audit import AuditKeys
from schemas.events import event_from_obj
from schemas.outputs import (
    Alert,
    CustomerState,
    EventSummary,
    ModelChange,
    ModelFigures,
    ModelReport,
    Prompt,
    Reason,
    format_ts,
)
from schemas.redis_keys import LAYOUT_VERSION, RedisKeys
from schemas.redis_url import RedisEndpoint
from sinks.audit import RedisAuditSink, verify_redis
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisEventsSink, RedisSink
from sinks.redis_client import connect
from tests.conftest import audit_key_file
from tests.dashboard_env import dashboard
from tests.live_engine import engine_settings, wait_for
from tests.services import RedisClusterNodes, redis_cluster, redis_sentinel

CUSTOMERS = [f"c{i}" for i in range(12)] + ["X:events", "{tag}", "客户 1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def client_of(nodes: RedisClusterNodes) -> Any:
    return connect(RedisEndpoint(nodes.url, cluster=True))


def alert(i: int, customer: str, ts: str = "2026-01-05T11:56:33.860Z") -> Alert:
    return Alert(f"al-{i:04d}", "suspicious_transaction", "high", 0.9, customer, "rm001", f"e{i}", ts,
                 "2026-01-05T11:56:34.000Z", (Reason("large_amount", "a large amount", float(i), 0.5),), "m1",
                 group_key=f"g-{i}")


def records() -> list[Any]:
    """An alert and a state per customer, prompts for two RMs, a model report and change."""
    figures = (ModelFigures("lgbm", "1", 0.9, 0.5, 100, 10),)
    out: list[Any] = [alert(i, c) for i, c in enumerate(CUSTOMERS)]
    out += [CustomerState(c, 0.1, 0.2, "2026-01-05T11:56:33.860Z", "2026-01-05T12:00:00.000Z") for c in CUSTOMERS]
    out += [Prompt(f"nb-{i}", c, f"rm{i % 2}", "rm_call", None, 0.5, (), "2026-01-06T00:00:00.000Z",
                   "nba-linucb-1", "large_credit", f"e{i}", "2026-01-05T10:00:00.000Z")
            for i, c in enumerate(CUSTOMERS[:6])]
    out += [ModelReport("mr-1", "2026-01-05T12:00:00.000Z", "lgbm", figures),
            ModelChange("mc-1", "promote", "river", "lgbm", "1", "better AUC", "2026-01-05T12:00:00.000Z", figures)]
    return out


def summaries() -> list[EventSummary]:
    made = [EventSummary.of(event_from_obj({
        "kind": "transaction", "event_id": f"ev-{i}", "ts": f"2026-01-05T11:00:{i:02d}Z",
        "customer_id": CUSTOMERS[i % len(CUSTOMERS)], "amount": float(i)})) for i in range(30)]
    return [s for s in made if s is not None]


def snapshot(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` on every master, with its value (streams without entry ids)."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        key = raw.decode()
        kind = client.type(key).decode()
        out[key] = {"string": lambda k: client.get(k), "hash": lambda k: client.hgetall(k),
                    "list": lambda k: client.lrange(k, 0, -1),
                    "stream": lambda k: [f for _, f in client.xrange(k)],
                    "set": lambda k: sorted(client.smembers(k))}[kind](key)
    return out


def test_the_sinks_write_once_on_a_cluster_one_customer_per_slot(cluster: RedisClusterNodes, tmp_path: Path) -> None:
    where = RedisEndpoint(cluster.url, cluster=True)
    dead = tmp_path / "dead.jsonl"
    sink = RedisSink(where, JsonlDeadLetters(dead), prefix="cl:")
    events = RedisEventsSink(where, JsonlDeadLetters(dead), 5, prefix="cl:")
    keys = AuditKeys.load(audit_key_file(tmp_path))
    audit = RedisAuditSink(where, RedisKeys("cl:").audit_log("audit"), keys, JsonlDeadLetters(dead))
    for s in (sink, events, audit):
        s.open()
    sink.write_batch(records())
    events.write_batch(summaries())
    audit.write_batch([alert(i, c) for i, c in enumerate(CUSTOMERS)])
    for s in (sink, events, audit):
        s.close()
    assert not dead.exists() or dead.read_text() == "", dead.read_text()  # nothing refused: no CROSSSLOT
    assert sink.delivered == len(records()) and sink.duplicates == 0

    client = client_of(cluster)
    k = RedisKeys("cl:")
    before = snapshot(client, "cl:")
    assert [f[b"id"].decode() for _, f in client.xrange(k.alerts())] == [f"al-{i:04d}" for i in range(len(CUSTOMERS))]
    assert client.get(k.layout()) == LAYOUT_VERSION.encode()
    assert orjson.loads(client.hget(k.models(), "change"))["change_id"] == "mc-1"
    assert client.xlen(k.model_changes()) == 1 and client.xlen(k.rm_prompts("rm0")) == 3
    assert verify_redis(where, k.audit_log("audit"), keys) == (True, f"{len(CUSTOMERS)} entries verified")
    for customer in CUSTOMERS:
        fields = client.hgetall(k.customer(customer))
        assert float(fields[b"fraud_score"]) == 0.9 and float(fields[b"churn_score"]) == 0.1
        assert client.llen(k.customer_events(customer)) == 2
        slots = {client.cluster_keyslot(key) for key in (
            k.customer(customer), k.customer_events(customer), k.customer_delivered(customer, "al-0000"))}
        assert len(slots) == 1, customer
    masters = {client.get_node_from_key(k.customer(c)).name for c in CUSTOMERS}
    assert len(masters) > 1, "every customer on one master: the tags do not spread them"

    # Everything again (a retry, or the replay after recovery): nothing changes.
    again = RedisSink(where, JsonlDeadLetters(dead), prefix="cl:")
    events_again = RedisEventsSink(where, JsonlDeadLetters(dead), 5, prefix="cl:")
    audit_again = RedisAuditSink(where, k.audit_log("audit"), keys, JsonlDeadLetters(dead))
    for s in (again, events_again, audit_again):
        s.open()
    again.write_batch(records())
    events_again.write_batch(summaries())
    audit_again.write_batch([alert(i, c) for i, c in enumerate(CUSTOMERS)])
    for s in (again, events_again, audit_again):
        s.close()
    assert again.duplicates == len(records()) and events_again.duplicates == len(summaries())
    assert audit_again.duplicates == len(CUSTOMERS)
    assert snapshot(client, "cl:") == before


def test_an_alert_half_written_is_completed_not_taken_for_a_duplicate(cluster: RedisClusterNodes,
                                                                      tmp_path: Path) -> None:
    """A crash between an alert's two writes (its customer's hash, then the global stream):
    the first write's marker is there, the second's not; the replay writes the stream entry."""
    where = RedisEndpoint(cluster.url, cluster=True)
    client, k = client_of(cluster), RedisKeys("half:")
    first = alert(1, "c-half")
    client.hset(k.customer("c-half"), "fraud_score", "0.9")
    client.set(k.customer_delivered("c-half", first.alert_id), "1", px=60_000)
    sink = RedisSink(where, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="half:")
    sink.open()
    sink.write_batch([first])
    sink.close()
    assert sink.duplicates == 0 and sink.delivered == 1
    assert [f[b"id"] for _, f in client.xrange(k.alerts())] == [first.alert_id.encode()]
    assert client.exists(k.delivered(first.alert_id))


def test_the_redis_input_reads_as_a_group_on_a_cluster(cluster: RedisClusterNodes) -> None:
    from flows.sources import Group, RedisStreamSource

    client, key = client_of(cluster), RedisKeys("in:").input_stream("events")
    source = RedisStreamSource(RedisEndpoint(cluster.url, cluster=True), key, batch_size=4,
                               group=Group("engine", "c1"))
    part = source.build_part("events_in", f"redis:{key}", None)
    for i in range(6):
        client.xadd(key, {"data": orjson.dumps({"kind": "transaction", "event_id": f"g-{i}",
                                                "ts": "2026-01-05T10:00:00Z", "customer_id": "c-g",
                                                "amount": 1.0 + i})})
    batch = part.next_batch() + part.next_batch()
    assert [item.event.event_id for item in batch] == [f"g-{i}" for i in range(6)]
    assert client.xpending(key, "engine")["pending"] == 6
    part.snapshot()  # the epoch's end: acknowledged
    assert client.xpending(key, "engine")["pending"] == 0
    part.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn exits its thread
def test_the_dashboard_works_on_a_cluster(cluster: RedisClusterNodes, tmp_path: Path) -> None:
    settings = engine_settings(cluster.url, "dc:", tmp_path)
    settings = replace(settings, redis=replace(settings.redis, cluster=True))
    where = settings.redis.endpoint()
    client, k = client_of(cluster), RedisKeys("dc:")
    now = time.time()
    sink = RedisSink(where, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="dc:")
    sink.open()
    sink.write_batch([alert(i, c, format_ts(now - 3600 + i)) for i, c in enumerate(CUSTOMERS[:6])]
                     + [Prompt("nb-dash", "c0", "rm001", "rm_call", None, 0.5, (), "2030-01-01T00:00:00.000Z",
                               "p", "large_credit", "e-p", format_ts(now - 60))])
    sink.close()
    with dashboard(settings, tmp_path) as dash:
        ana, csrf = dash.login("ana")
        items = wait_for(lambda: (page := ana.get("/api/alerts").json()["items"]) and len(page) == 6 and page,
                         what="six alerts indexed")
        refs = {a["customer_id"]: a["ref"] for a in items}
        page = ana.get("/api/alerts?limit=2&offset=2&severity=high&type=suspicious_transaction&rm=rm001").json()
        assert page["total"] == 6 and len(page["items"]) == 2  # ZINTERSTORE of the filters' sets
        closed = ana.post(f"/api/alerts/{refs['c1']}/close", json={"label": "fraud"}, headers={"X-CSRF-Token": csrf})
        assert closed.status_code == 200 and closed.json()["changed"] is True, closed.text
        assert ana.get("/api/alerts?status=closed_fraud").json()["total"] == 1
        customer = ana.get(f"/api/customers/{items[0]['cref']}").json()
        assert customer["fraud_score"] == 0.9 and customer["open_groups"] == 1
        rm, rm_csrf = dash.login("rm1")
        wait_for(lambda: rm.get("/api/rm/prompts").json()["total"] == 1, what="the prompt indexed")
        answered = rm.post("/api/rm/prompts/nb-dash/answer", json={"answer": "accepted"},
                           headers={"X-CSRF-Token": rm_csrf})
        assert answered.status_code == 200 and answered.json()["status"] == "accepted", answered.text
        assert rm.get("/api/rm/prompts?which=accepted").json()["total"] == 1
        # cases: one per customer, opened by the indexer's script; a maker-checker close
        # closes the case's alert and sends its label in one script, in the {dash} slot
        cases = wait_for(lambda: (page := ana.get("/api/cases").json())["total"] == 6 and page["items"],
                         what="six cases")
        case = next(c for c in cases if c["customer_id"] == "c2")
        ana.post(f"/api/cases/{case['id']}/notes", json={"text": "checked"}, headers={"X-CSRF-Token": csrf})
        ana.post(f"/api/cases/{case['id']}/propose", json={"decision": "no_action"}, headers={"X-CSRF-Token": csrf})
        bea, bea_csrf = dash.login("bea")
        approved = bea.post(f"/api/cases/{case['id']}/approve", headers={"X-CSRF-Token": bea_csrf})
        assert approved.status_code == 200 and approved.json()["closed_alerts"] == [refs["c2"]], approved.text
        assert ana.get(f"/api/alerts/{refs['c2']}").json()["status"] == "closed_legit"
    sent = [orjson.loads(f[b"data"]) for _, f in client.xrange(k.input_stream("feedback:in"))]
    assert sorted(e["label"] for e in sent) == ["fraud", "legit", "nba_accepted"]
    assert client.llen(k.audit_log("audit")) >= 2  # the actions, audited


def test_a_sink_writes_through_a_sentinel_to_its_master(tmp_path: Path) -> None:
    with redis_sentinel(tmp_path) as setup:
        settings = RedisSettings(url=setup.url(db=2))
        sink = RedisSink(settings.endpoint(), JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="se:")
        sink.open()
        sink.write_batch([alert(1, "c-s")])
        sink.close()
        assert sink.delivered == 1
        master = redis.Redis.from_url(setup.master_url.rsplit("/", 1)[0] + "/2")
        assert [f[b"id"] for _, f in master.xrange(RedisKeys("se:").alerts())] == [b"al-0001"]


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel://127.0.0.1:26379", "names the master's service"),
    ("redis+sentinel://127.0.0.1:notaport/crm", "no valid port"),
    ("redis+sentinel:///crm", "at least one Sentinel"),
    ("redis+sentinel://h:26379/crm/one", "only a database number"),
    ("redis+sentinel://h:26379/crm?ssl=true", "no query"),
    ("sentinel://h:26379/crm", "starts with redis://"),
])
def test_a_bad_sentinel_url_is_a_clear_config_error(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"redis.url: .*{why}"):
        RedisSettings(url=url)
    with pytest.raises(ConfigError, match="not reached through Sentinels"):
        RedisSettings(url="redis+sentinel://h:26379/crm", cluster=True)
    with pytest.raises(ConfigError, match="key_prefix: may not hold"):
        RedisSettings(key_prefix="{crm}:")


def test_a_password_is_never_shown() -> None:
    where = RedisSettings(url="redis+sentinel://:s3cret@h:26379/crm").endpoint()
    assert "s3cret" not in str(where) and "s3cret" not in repr(where)
    assert where.sentinel().password == "s3cret"
    assert isinstance(connect(where), redis.Redis)  # lazy: nothing asked yet
    assert isinstance(connect(RedisEndpoint("redis://127.0.0.1:1/0")), redis.Redis)
    assert not isinstance(connect(RedisEndpoint("redis://127.0.0.1:1/0")), redis.cluster.RedisCluster)
