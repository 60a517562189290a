"""The Redis key layout (``schemas.redis_keys``) with hostile ids: no id, RM id or username
can produce another key's name, and customers whose ids hold ``:``, ``{``, ``}``, spaces,
``%``, unicode or 128 characters are written by the engine and served by the dashboard like
any other."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from schemas.outputs import format_ts
from schemas.redis_keys import RedisKeys, decode, encode
from tests.dashboard_env import dashboard
from tests.live_engine import engine_settings, inject, live_engine, wait_for
from tests.services import redis_server

#: Pairs that collided in the old layout (``X`` next to ``X:events``), characters with a
#: meaning in keys, hash tags and SCAN patterns, an escape lookalike, unicode, 128 characters.
HOSTILE = ("X", "X:events", "a:b:c", "{tag}", "}{", "with space", "A", "%41", "*", "rm:x:prompts", "客户:甲 1",
           "c" * 128)
HOSTILE_RM = "rm 9:{x}*"

KEYS = RedisKeys("crm:")
ONE_ID: list[Callable[[str], str]] = [
    KEYS.customer, KEYS.customer_events, KEYS.rm_prompts, KEYS.delivered, KEYS.alert, KEYS.customer_alerts,
    KEYS.customer_prompts, KEYS.owner, KEYS.customer_ref, KEYS.prompt, KEYS.rm_queue, KEYS.rm_accepted,
    KEYS.rm_stats, KEYS.session, KEYS.user_sessions, KEYS.lock, KEYS.queue, KEYS.queue_cache,
    lambda v: KEYS.queue_by("rm", v), lambda v: KEYS.queue_by("type", v),
    lambda v: KEYS.login_failures("user", v), lambda v: KEYS.login_failures("ip", v),
    lambda v: KEYS.customer_delivered(v, v), lambda v: KEYS.rm_delivered(v, v),
    KEYS.case, KEYS.case_alerts, KEYS.case_log, KEYS.customer_case, KEYS.cases, KEYS.backtest]
FIXED = [KEYS.layout(), KEYS.alerts(), KEYS.alerts_channel(), KEYS.ref_key(), KEYS.cursors(), KEYS.scores(),
         KEYS.volume(), KEYS.backtests(), KEYS.models(), KEYS.model_changes(), KEYS.input_stream("feedback:in"),
         KEYS.audit_log("audit")]


@given(st.lists(st.text(min_size=0, max_size=130), min_size=2, max_size=6, unique=True))
def test_no_two_ids_or_kinds_of_key_share_a_key(ids: list[str]) -> None:
    owner: dict[str, tuple[int, str]] = {key: (-1, key) for key in FIXED}
    for kind, make in enumerate(ONE_ID):
        for value in ids:
            key = make(value)
            assert owner.setdefault(key, (kind, value)) == (kind, value), (key, owner[key], (kind, value))
            # one hash tag, the layout's: an id's own encoding, or a fixed tag (no id chooses a slot)
            assert key.count("{") == key.count("}") == 1, key
            assert key[key.index("{") + 1:key.index("}")] in (encode(value) or "%", "engine", "dash"), key


@given(st.text(max_size=130), st.text(max_size=130))
def test_one_customers_keys_share_a_hash_tag_and_so_a_slot(customer: str, record: str) -> None:
    def tag(key: str) -> str:
        return key[key.index("{") + 1:key.index("}")]
    assert tag(KEYS.customer(customer)) == tag(KEYS.customer_events(customer)) \
        == tag(KEYS.customer_delivered(customer, record))
    assert tag(KEYS.rm_prompts(customer)) == tag(KEYS.rm_delivered(customer, record))
    assert tag(KEYS.alerts()) == tag(KEYS.delivered(record)) == tag(KEYS.models()) == tag(KEYS.model_changes())
    assert tag(KEYS.alert(record)) == tag(KEYS.queue("all")) == tag(KEYS.input_stream("in")) \
        == tag(KEYS.customer_alerts(customer)) == tag(KEYS.owner(customer))
    # a case's keys are written by one script with the alerts and the engine's input
    assert tag(KEYS.case(record)) == tag(KEYS.case_alerts(record)) == tag(KEYS.case_log(record)) \
        == tag(KEYS.customer_case(customer)) == tag(KEYS.cases("open")) == tag(KEYS.alert(record)) == "dash"


@given(st.text(max_size=200))
def test_encoded_parts_hold_no_separator_and_decode_back(value: str) -> None:
    part = encode(value)
    assert decode(part) == value
    assert not set(part) & set(":{}*?[] \\")


def _events(customer: str, rm: str, now: float) -> list[dict[str, Any]]:
    """A profile, six card payments over a week, then a password reset and a large transfer
    from a new device to a new payee (the takeover rule fires); short event ids, so that a
    customer id of 128 characters still makes valid events."""
    tag = hashlib.sha256(customer.encode()).hexdigest()[:12]
    events: list[dict[str, Any]] = [{"kind": "profile", "event_id": f"{tag}-p", "ts": format_ts(now - 9 * 86400),
                                     "customer_id": customer, "rm_id": rm, "segment": "mass", "risk_level": 2}]
    events += [{"kind": "transaction", "event_id": f"{tag}-h{i}", "ts": format_ts(now - (8 - i) * 86400),
                "customer_id": customer, "amount": 100.0 + i, "txn_type": "card_payment", "channel": "pos",
                "counterparty_id": f"m-{tag}", "device_id": "d-home"} for i in range(6)]
    events += [{"kind": "app", "event_id": f"{tag}-reset", "ts": format_ts(now - 600), "customer_id": customer,
                "action": "password_reset", "device_id": "d-new"},
               {"kind": "transaction", "event_id": f"{tag}-steal", "ts": format_ts(now), "customer_id": customer,
                "amount": 40_000.0 + len(customer), "txn_type": "transfer", "channel": "app",
                "counterparty_id": "p-unknown", "device_id": "d-new"}]
    return events


def test_hostile_ids_are_written_by_the_engine_and_served_by_the_dashboard(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "hk:", tmp_path, recent_events=20)
        dead = tmp_path / "dead-redis.jsonl"
        settings = replace(settings, redis=replace(settings.redis, dead_letter_path=str(dead)))
        keys = RedisKeys("hk:")
        rm_of = {c: HOSTILE_RM if i % 3 == 0 else "rm001" for i, c in enumerate(HOSTILE)}
        now = time.time()
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            inject(client, settings, *(e for c in HOSTILE for e in _events(c, rm_of[c], now)))
            ana, _ = dash.login("ana")

            def queue() -> dict[str, dict[str, Any]] | None:
                items = ana.get("/api/alerts?limit=200").json()["items"]
                return {a["customer_id"]: a for a in items} if len(items) >= len(HOSTILE) else None
            alerts = wait_for(queue, timeout=60, what="an alert for every hostile customer")
            assert set(alerts) == set(HOSTILE)
            for customer in HOSTILE:
                tag = hashlib.sha256(customer.encode()).hexdigest()[:12]
                # the engine's own keys: the customer's hash and list, each of its own customer
                engine = client.hgetall(keys.customer(customer))
                assert orjson.loads(engine[b"last_alert"])["customer_id"] == customer
                listed = [orjson.loads(raw) for raw in client.lrange(keys.customer_events(customer), 0, -1)]
                assert {e["customer_id"] for e in listed} == {customer} and len(listed) == 8
                # the dashboard: 200, the right customer, the right events
                reply = ana.get(f"/api/customers/{alerts[customer]['cref']}")
                assert reply.status_code == 200, (customer, reply.text[:200])
                shown = reply.json()
                assert shown["customer_id"] == customer and shown["rm_id"] == rm_of[customer]
                assert shown["fraud_score"] is not None and shown["open_groups"] == 1
                events = {t["event_id"] for t in shown["timeline"] if t["kind"] == "event"}
                assert events == {f"{tag}-h{i}" for i in range(6)} | {f"{tag}-reset", f"{tag}-steal"}, customer
                detail = ana.get(f"/api/alerts/{alerts[customer]['ref']}")
                assert detail.status_code == 200 and detail.json()["customer"]["customer_id"] == customer
            # an RM id that is hostile too: its customers are its own
            assert client.exists(keys.queue_by("rm", HOSTILE_RM))
            owned = {c for c in HOSTILE if client.get(keys.owner(c)) == HOSTILE_RM.encode()}
            assert owned == {c for c in HOSTILE if rm_of[c] == HOSTILE_RM}
        assert not dead.exists() or dead.read_text() == ""
        assert client.get(keys.layout()) == b"3"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn exits its thread
def test_the_dashboard_refuses_a_prefix_of_another_layout(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        redis.Redis.from_url(srv.url).set("old:layout", "1")
        settings = engine_settings(srv.url, "old:", tmp_path)
        with pytest.raises(AssertionError, match="did not start"), dashboard(settings, tmp_path):
            pass
