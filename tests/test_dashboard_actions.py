"""Actions on alerts and prompts are idempotent, against a real Redis: a repeat returns the
current state with ``changed: false`` and sends nothing to the engine, a closed alert takes
no other action (409, and it stays closed), and concurrent requests send one label."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis

from schemas.outputs import Alert, Reason, format_ts
from schemas.redis_keys import RedisKeys
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisSink
from tests.dashboard_env import Dashboard, dashboard
from tests.live_engine import engine_settings, wait_for
from tests.services import redis_server

PREFIX = "act:"


def alert(i: int, revision: int = 1) -> Alert:
    ts = format_ts(time.time() - 3600 + i)
    return Alert(f"al-{i}-{revision}", "suspicious_transaction", "high", 0.9, f"c-act-{i}", "rm001", f"e-{i}", ts, ts,
                 (Reason("large_amount", "a large amount", 1.0, 0.5),), "m1", group_key=f"g-{i}",
                 revision=revision)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, redis.Redis, dict[int, str]]]:
    tmp = tmp_path_factory.mktemp("dash-actions")
    with redis_server(tmp) as srv:
        client = redis.Redis.from_url(srv.url)
        sink = RedisSink(srv.url, JsonlDeadLetters(tmp / "dead.jsonl"), prefix=PREFIX)
        sink.open()
        sink.write_batch([alert(i) for i in range(6)])
        sink.close()
        client.xadd(RedisKeys(PREFIX).rm_prompts("rm001"), {"id": "nb-act", "data": orjson.dumps({
            "prompt_id": "nb-act", "customer_id": "c-act-0", "rm_id": "rm001", "action": "rm_call", "product_id": None,
            "score": 0.1, "reasons": [], "expires_at": "2030-01-01T00:00:00.000Z", "policy_version": "p",
            "trigger": "large_credit", "event_id": "e-x", "event_ts": "2026-01-01T00:00:00.000Z",
            "schema_version": "1"})})
        with dashboard(engine_settings(srv.url, PREFIX, tmp), tmp) as dash:
            ana, _ = dash.login("ana")
            items = wait_for(lambda: (page := ana.get("/api/alerts").json()["items"]) and len(page) == 6 and page)
            yield dash, client, {int(a["customer_id"].rsplit("-", 1)[1]): a["ref"] for a in items}


def sent(client: redis.Redis) -> list[dict]:
    """Every event the dashboard added to the engine's input stream."""
    return [orjson.loads(fields[b"data"]) for _, fields in client.xrange(RedisKeys(PREFIX).input_stream("feedback:in"))]


def test_closing_twice_sends_one_label_and_a_closed_alert_cannot_be_snoozed(
        world: tuple[Dashboard, redis.Redis, dict[int, str]]) -> None:
    dash, client, refs = world
    ana, csrf = dash.login("ana")
    headers = {"X-CSRF-Token": csrf}
    ref = refs[0]
    first = ana.post(f"/api/alerts/{ref}/close", json={"label": "fraud"}, headers=headers)
    assert first.status_code == 200 and first.json()["changed"] is True and first.json()["sent_event_id"]
    for _ in range(3):
        again = ana.post(f"/api/alerts/{ref}/close", json={"label": "fraud"}, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["changed"] is False and again.json()["sent_event_id"] is None
        assert again.json()["status"] == "closed_fraud"
    # the other label, a snooze, an acknowledgement, an assignment: refused, and nothing changes
    for path, body in (("close", {"label": "legit"}), ("snooze", {"hours": 24}), ("acknowledge", {}),
                       ("assign", {"assignee": "ana"})):
        reply = ana.post(f"/api/alerts/{ref}/{path}", json=body, headers=headers)
        assert reply.status_code == 409 and "closed_fraud" in reply.json()["detail"], (path, reply.text)
    assert ana.get(f"/api/alerts/{ref}").json()["status"] == "closed_fraud"
    assert ref not in {a["ref"] for a in ana.get("/api/alerts?status=active").json()["items"]}
    assert ref in {a["ref"] for a in ana.get("/api/alerts?status=closed_fraud").json()["items"]}
    events = [e for e in sent(client) if e["customer_id"] == "c-act-0"]
    assert [(e["kind"], e.get("label")) for e in events] == [("feedback", "fraud")]
    assert events[0]["event_id"] == first.json()["sent_event_id"]
    # only the applied action is audited
    root, _ = dash.login("root")
    audited = [e["record"] for e in root.get("/api/audit?limit=500").json()["items"]
               if e["record"].get("target") == ref]
    assert [r["action"] for r in audited] == ["close"]


def test_concurrent_closes_send_one_label(world: tuple[Dashboard, redis.Redis, dict[int, str]]) -> None:
    dash, client, refs = world
    sessions = [dash.login("ana") for _ in range(8)]

    def close(i: int) -> dict:
        ana, csrf = sessions[i]
        reply = ana.post(f"/api/alerts/{refs[1]}/close", json={"label": "legit"}, headers={"X-CSRF-Token": csrf})
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(close, range(8)))
    assert sum(r["changed"] for r in replies) == 1
    assert all(r["status"] == "closed_legit" for r in replies)
    labels = [e for e in sent(client) if e["customer_id"] == "c-act-1"]
    assert len(labels) == 1 and labels[0]["label"] == "legit"


def test_repeated_snoozes_and_acknowledgements_send_nothing_new(
        world: tuple[Dashboard, redis.Redis, dict[int, str]]) -> None:
    dash, client, refs = world
    ana, csrf = dash.login("ana")
    headers = {"X-CSRF-Token": csrf}
    ref = refs[2]
    replies = [ana.post(f"/api/alerts/{ref}/snooze", json={"hours": 24}, headers=headers).json() for _ in range(3)]
    assert [r["changed"] for r in replies] == [True, False, False]
    assert [e["kind"] for e in sent(client) if e["customer_id"] == "c-act-2"] == ["control"]
    ack = [ana.post(f"/api/alerts/{ref}/acknowledge", json={}, headers=headers).json() for _ in range(2)]
    assert [(r["status"], r["changed"]) for r in ack] == [("acknowledged", True), ("acknowledged", False)]
    assign = [ana.post(f"/api/alerts/{ref}/assign", json={"assignee": "ana"}, headers=headers).json()
              for _ in range(2)]
    assert [(r["assignee"], r["changed"]) for r in assign] == [("ana", True), ("ana", False)]
    # acknowledged again, a snooze applies again: the group left the snoozed state in between
    assert ana.post(f"/api/alerts/{ref}/snooze", json={"hours": 1}, headers=headers).json()["changed"] is True
    assert [e["kind"] for e in sent(client) if e["customer_id"] == "c-act-2"] == ["control", "control"]


def test_a_new_revision_keeps_the_status_an_action_gave(
        world: tuple[Dashboard, redis.Redis, dict[int, str]], tmp_path: Path) -> None:
    dash, client, refs = world
    ana, csrf = dash.login("ana")
    ref = refs[3]
    assert ana.post(f"/api/alerts/{ref}/close", json={"label": "fraud"},
                    headers={"X-CSRF-Token": csrf}).json()["changed"] is True
    sink = RedisSink(f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0",
                     JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix=PREFIX)
    sink.open()
    sink.write_batch([alert(3, revision=2)])
    sink.close()
    shown = wait_for(lambda: (a := ana.get(f"/api/alerts/{ref}").json())["revision"] == 2 and a)
    assert shown["status"] == "closed_fraud"
    assert ref not in {a["ref"] for a in ana.get("/api/alerts?status=active").json()["items"]}


def test_answering_a_prompt_twice_sends_one_answer(world: tuple[Dashboard, redis.Redis, dict[int, str]]) -> None:
    dash, client, _ = world
    rm1, csrf = dash.login("rm1")
    wait_for(lambda: rm1.get("/api/rm/prompts").json()["total"] == 1)
    headers = {"X-CSRF-Token": csrf}
    replies = [rm1.post("/api/rm/prompts/nb-act/answer", json={"answer": "accepted"}, headers=headers)
               for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert [r.json()["changed"] for r in replies] == [True, False, False]
    assert rm1.post("/api/rm/prompts/nb-act/answer", json={"answer": "converted"},
                    headers=headers).json()["changed"] is True
    late = rm1.post("/api/rm/prompts/nb-act/answer", json={"answer": "dismissed"}, headers=headers)
    assert late.status_code == 409
    answers = [e["label"] for e in sent(client) if e.get("ref_prompt_id") == "nb-act"]
    assert answers == ["nba_accepted", "nba_converted"]
    assert rm1.get("/api/stats").json()["rm"]["accepted"] == 1
