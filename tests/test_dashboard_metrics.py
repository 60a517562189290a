"""The dashboard's /metrics: requests by route template, their durations, open event streams,
actions and failed sign-ins, on a port of their own, over a real Redis; no label names a
user, a customer or an alert, and ``promtool check metrics`` finds nothing to remark."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from dashboard.metrics import ACTIONS, DashboardMetrics, serve
from schemas.outputs import Alert, Reason, format_ts
from schemas.redis_keys import RedisKeys
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisSink
from tests.brokers import free_port
from tests.brokers import http_get as get
from tests.dashboard_env import Dashboard, dashboard
from tests.live_engine import engine_settings, wait_for
from tests.services import redis_server

PREFIX = "dm:"


def alert(i: int) -> Alert:
    ts = format_ts(time.time() - 3600 + i)
    return Alert(f"al-dm-{i}", "suspicious_transaction", "high", 0.9, f"c-dm-{i}", "rm001", f"e-dm-{i}", ts, ts,
                 (Reason("large_amount", "a large amount", 1.0, 0.5),), "m1", group_key=f"g-dm-{i}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, DashboardMetrics, list[str]]]:
    tmp = tmp_path_factory.mktemp("dash-metrics")
    with redis_server(tmp) as srv:
        client = redis.Redis.from_url(srv.url)
        sink = RedisSink(srv.url, JsonlDeadLetters(tmp / "dead.jsonl"), prefix=PREFIX)
        sink.open()
        sink.write_batch([alert(i) for i in range(3)])
        sink.close()
        client.xadd(RedisKeys(PREFIX).rm_prompts("rm001"), {"id": "nb-dm", "data": orjson.dumps({
            "prompt_id": "nb-dm", "customer_id": "c-dm-0", "rm_id": "rm001", "action": "rm_call", "product_id": None,
            "score": 0.1, "reasons": [], "expires_at": "2030-01-01T00:00:00.000Z", "policy_version": "p",
            "trigger": "large_credit", "event_id": "e-x", "event_ts": "2026-01-01T00:00:00.000Z",
            "schema_version": "1"})})
        metrics = DashboardMetrics(CollectorRegistry())
        with dashboard(engine_settings(srv.url, PREFIX, tmp), tmp, metrics=metrics) as dash:
            ana, _ = dash.login("ana")
            items = wait_for(lambda: (page := ana.get("/api/alerts").json()["items"]) and len(page) == 3 and page)
            yield dash, metrics, [a["ref"] for a in items]


def value(metrics: DashboardMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_actions_and_failed_sign_ins_are_counted_once_by_kind(
        world: tuple[Dashboard, DashboardMetrics, list[str]]) -> None:
    dash, metrics, refs = world
    with httpx.Client(base_url=dash.url, timeout=10) as anon:
        assert anon.post("/api/login", json={"username": "ana", "password": "wrong-password!"}).status_code == 401
        assert anon.post("/api/login", json={"username": "nobody", "password": "wrong-password!"}).status_code == 401
    assert value(metrics, "crm_dashboard_login_failures_total", reason="wrong_credentials") == 2
    ana, csrf = dash.login("ana")
    headers = {"X-CSRF-Token": csrf}
    for _ in range(2):  # the repeat changes nothing: not counted
        assert ana.post(f"/api/alerts/{refs[0]}/close", json={"label": "fraud"}, headers=headers).status_code == 200
    assert ana.post(f"/api/alerts/{refs[1]}/acknowledge", headers=headers).status_code == 200
    assert ana.post(f"/api/alerts/{refs[2]}/snooze", json={"hours": 2}, headers=headers).status_code == 200
    rm, rm_csrf = dash.login("rm1")
    wait_for(lambda: rm.get("/api/rm/prompts").json()["items"])
    assert rm.post("/api/rm/prompts/nb-dm/answer", json={"answer": "accepted"},
                   headers={"X-CSRF-Token": rm_csrf}).status_code == 200
    counted = {kind: value(metrics, "crm_dashboard_actions_total", kind=kind) for kind in ACTIONS}
    assert counted == {**dict.fromkeys(ACTIONS, 0.0), "close_fraud": 1, "acknowledge": 1, "snooze": 1,
                       "prompt_accepted": 1}


def test_requests_are_labelled_by_route_template_and_timed(
        world: tuple[Dashboard, DashboardMetrics, list[str]]) -> None:
    dash, metrics, refs = world
    ana, _ = dash.login("ana")
    before = value(metrics, "crm_dashboard_http_requests_total", route="/api/alerts/{ref}", method="GET",
                   status="200")
    for ref in refs:
        assert ana.get(f"/api/alerts/{ref}").status_code == 200
    assert ana.get("/api/alerts/no-such-ref").status_code == 404
    assert ana.get("/no/such/page").status_code == 404
    assert value(metrics, "crm_dashboard_http_requests_total", route="/api/alerts/{ref}", method="GET",
                 status="200") == before + 3
    assert value(metrics, "crm_dashboard_http_requests_total", route="/api/alerts/{ref}", method="GET",
                 status="404") >= 1
    assert value(metrics, "crm_dashboard_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert value(metrics, "crm_dashboard_http_request_duration_seconds_count", route="/api/alerts/{ref}",
                 method="GET") >= 4
    # No label value holds an id or a user: only route templates, methods, statuses and kinds.
    values = {v for family in metrics.registry.collect() for s in family.samples for v in s.labels.values()}
    assert not [v for v in values if any(secret in v for secret in (*refs, "c-dm-", "ana", "rm1", "nb-dm"))]


def test_open_event_streams_are_counted_while_open(world: tuple[Dashboard, DashboardMetrics, list[str]]) -> None:
    dash, metrics, _ = world
    ana, _ = dash.login("ana")
    assert value(metrics, "crm_dashboard_sse_clients") == 0
    with httpx.Client(base_url=dash.url, timeout=10, cookies=ana.cookies) as other, \
            other.stream("GET", "/api/events") as stream:
        chunks = stream.iter_bytes()  # held: dropping it would close the stream
        first = next(chunks)
        assert stream.status_code == 200, (stream.status_code, first)
        time.sleep(1.5)  # past the stream's first session check: still open
        assert value(metrics, "crm_dashboard_sse_clients") == 1
    wait_for(lambda: value(metrics, "crm_dashboard_sse_clients") == 0, timeout=10)


def test_metrics_are_served_on_their_own_port_and_pass_promtool(
        world: tuple[Dashboard, DashboardMetrics, list[str]]) -> None:
    dash, metrics, _ = world
    port = free_port()
    server = serve(metrics.registry, "127.0.0.1", port)
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    assert status == 200
    assert 'crm_dashboard_actions_total{kind="close_fraud"}' in body and "process_resident_memory_bytes" in body
    assert "_created" not in body
    with httpx.Client(base_url=dash.url, timeout=10) as anon:  # not on the dashboard's own port
        assert anon.get("/metrics").status_code == 404
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` (make test does it)")
    proc = subprocess.run([binary, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr

