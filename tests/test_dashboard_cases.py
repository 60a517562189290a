"""Cases against a real Redis: a customer's open fraud alerts grouped into one case, worked by
one analyst and approved by another (maker-checker), every alert of the case closed with one
feedback label each, the report exported for a "report" decision, every step audited, and
every endpoint authorized like the others (401 without a session, 403 for RMs, for admins'
changes and without the CSRF token; admins see cases masked)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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

PREFIX = "cases:"
KINDS = ("suspicious_transaction", "aml_pattern")


def alert(customer: str, i: int, kind: str = "suspicious_transaction", ago_s: float = 3600.0) -> Alert:
    ts = format_ts(time.time() - ago_s + i)
    return Alert(f"al-{customer}-{i}", kind, "high", 0.9, customer, "rm001", f"e-{customer}-{i}", ts, ts,
                 (Reason("large_amount", "a large amount to p-77", 1.0, 0.5),), "m1", group_key=f"g-{customer}-{i}")


def write(url: str, tmp: Path, alerts: list[Alert]) -> None:
    sink = RedisSink(url, JsonlDeadLetters(tmp / "dead.jsonl"), prefix=PREFIX)
    sink.open()
    sink.write_batch(alerts)
    sink.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, redis.Redis, str]]:
    tmp = tmp_path_factory.mktemp("dash-cases")
    with redis_server(tmp) as srv:
        client = redis.Redis.from_url(srv.url)
        write(srv.url, tmp, [alert("c-case-0", 0), alert("c-case-0", 1, "aml_pattern"), alert("c-case-1", 0),
                             alert("c-case-2", 0, "churn_risk")])
        with dashboard(engine_settings(srv.url, PREFIX, tmp), tmp) as dash:
            ana, _ = dash.login("ana")
            wait_for(lambda: ana.get("/api/cases").json()["total"] == 2)
            yield dash, client, srv.url


def sent(client: redis.Redis) -> list[dict]:
    return [orjson.loads(f[b"data"]) for _, f in client.xrange(RedisKeys(PREFIX).input_stream("feedback:in"))]


def case_of(client: httpx.Client, customer: str) -> dict:
    return next(c for c in client.get("/api/cases?status=open").json()["items"] + client.get(
        "/api/cases?status=closed").json()["items"] if c["customer_id"] == customer)


def audited(dash: Dashboard, target: str) -> list[str]:
    root, _ = dash.login("root")
    return [e["record"]["action"] for e in reversed(root.get("/api/audit?limit=500").json()["items"])
            if e["record"].get("target") == target]


def test_open_alerts_of_a_customer_form_one_case_and_new_ones_join_it(
        world: tuple[Dashboard, redis.Redis, str], tmp_path: Path) -> None:
    dash, _, url = world
    ana, _ = dash.login("ana")
    case = case_of(ana, "c-case-0")
    assert case["status"] == "open" and case["alerts"] == 2
    detail = ana.get(f"/api/cases/{case['id']}").json()
    assert {a["type"] for a in detail["alert_groups"]} == set(KINDS)
    assert [e["action"] for e in detail["log"]] == ["opened", "joined", "joined"]
    # churn warnings are the RM's: no case
    assert all(c["customer_id"] != "c-case-2" for c in ana.get("/api/cases").json()["items"])
    write(url, tmp_path, [alert("c-case-0", 2)])
    wait_for(lambda: case_of(ana, "c-case-0")["alerts"] == 3)
    assert ana.get("/api/cases").json()["total"] == 2
    assert audited(dash, case["id"]) == ["case_opened", "case_alert_joined", "case_alert_joined"]


def test_maker_checker_close_sends_one_label_per_alert_and_exports_the_report(
        world: tuple[Dashboard, redis.Redis, str], tmp_path: Path) -> None:
    dash, client, url = world
    ana, csrf_a = dash.login("ana")
    bea, csrf_b = dash.login("bea")
    ha, hb = {"X-CSRF-Token": csrf_a}, {"X-CSRF-Token": csrf_b}
    case = case_of(ana, "c-case-0")
    cid = case["id"]
    assert ana.post(f"/api/cases/{cid}/assign", json={"assignee": "ana"}, headers=ha).json()["owner"] == "ana"
    assert ana.post(f"/api/cases/{cid}/assign", json={"assignee": "rm1"}, headers=ha).status_code == 422
    assert ana.post(f"/api/cases/{cid}/notes", json={"text": "payee p-77 seen in two cases"},
                    headers=ha).json()["changed"] is True
    # no report before a "report" proposal; no approval before a proposal
    assert ana.get(f"/api/cases/{cid}/report.csv").status_code == 409
    assert bea.post(f"/api/cases/{cid}/approve", headers=hb).status_code == 409
    proposed = ana.post(f"/api/cases/{cid}/propose", json={"decision": "report", "reason": "mule pattern"}, headers=ha)
    assert proposed.json()["status"] == "proposed" and proposed.json()["proposed_by"] == "ana"
    # the maker can neither approve nor reject; another proposal is a conflict
    assert ana.post(f"/api/cases/{cid}/approve", headers=ha).status_code == 403
    assert ana.post(f"/api/cases/{cid}/reject", json={}, headers=ha).status_code == 403
    assert bea.post(f"/api/cases/{cid}/propose", json={"decision": "fraud"}, headers=hb).status_code == 409
    # the checker rejects back to open; the maker proposes again; the checker approves
    assert bea.post(f"/api/cases/{cid}/reject", json={"reason": "add the payee"}, headers=hb).json()["status"] == "open"
    assert ana.post(f"/api/cases/{cid}/propose", json={"decision": "report"}, headers=ha).json()["changed"] is True
    before = len(sent(client))
    approved = bea.post(f"/api/cases/{cid}/approve", headers=hb).json()
    assert approved["status"] == "closed" and approved["decision"] == "report" and approved["decided_by"] == "bea"
    assert len(approved["closed_alerts"]) == 3 and len(approved["sent_event_ids"]) == 3
    again = bea.post(f"/api/cases/{cid}/approve", headers=hb).json()
    assert again["changed"] is False and again["sent_event_ids"] == []
    labels = sent(client)[before:]
    assert sorted(e["ref_event_id"] for e in labels) == [f"e-c-case-0-{i}" for i in range(3)]
    assert {e["label"] for e in labels} == {"fraud"} and {e["event_id"] for e in labels} == set(
        approved["sent_event_ids"])
    for ref in approved["closed_alerts"]:
        assert ana.get(f"/api/alerts/{ref}").json()["status"] == "closed_fraud"
    assert ana.post(f"/api/cases/{cid}/notes", json={"text": "late"}, headers=ha).status_code == 409
    # the report: CSV and a printable page with the decisions and who made them
    reply = ana.get(f"/api/cases/{cid}/report.csv")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    sections = {r["section"] for r in rows}
    assert {"case", "customer", "transaction", "reason", "timeline", "decision"} <= sections
    decisions = [(r["what"].split(";")[0], r["by"]) for r in rows if r["section"] == "decision"]
    assert decisions == [("proposed", "ana"), ("rejected", "bea"), ("proposed", "ana"), ("approved", "bea")]
    assert any(r["id"] == "c-case-0" for r in rows if r["section"] == "customer")
    page = ana.get(f"/api/cases/{cid}/report.html")
    assert page.status_code == 200 and "<script" not in page.text and "Suspicious-transaction report" in page.text
    assert "c-case-0" in page.text and "approved" in page.text
    assert audited(dash, cid)[3:] == ["case_assign", "case_note", "case_propose", "case_reject", "case_propose",
                                      "case_approve", "report_exported", "report_exported"]
    # the customer's next alert opens a new case
    write(url, tmp_path, [alert("c-case-0", 3)])
    fresh = wait_for(lambda: next((c for c in ana.get("/api/cases").json()["items"]
                                   if c["customer_id"] == "c-case-0"), None))
    assert fresh["id"] != cid and fresh["alerts"] == 1 and fresh["status"] == "open"


def test_no_action_closes_as_false_positive(world: tuple[Dashboard, redis.Redis, str]) -> None:
    dash, client, _ = world
    ana, csrf_a = dash.login("ana")
    bea, csrf_b = dash.login("bea")
    cid = case_of(ana, "c-case-1")["id"]
    ana.post(f"/api/cases/{cid}/propose", json={"decision": "no_action"}, headers={"X-CSRF-Token": csrf_a})
    done = bea.post(f"/api/cases/{cid}/approve", headers={"X-CSRF-Token": csrf_b}).json()
    assert done["decision"] == "no_action" and len(done["sent_event_ids"]) == 1
    assert [e["label"] for e in sent(client) if e["customer_id"] == "c-case-1"] == ["legit"]
    assert ana.get(f"/api/cases/{cid}/report.csv").status_code == 409  # not a report


def test_cases_are_authorized_like_every_endpoint(world: tuple[Dashboard, redis.Redis, str]) -> None:
    dash, _, _ = world
    ana, _ = dash.login("ana")
    cid = next(c["id"] for c in ana.get("/api/cases?status=closed").json()["items"] if c["customer_id"] == "c-case-0")
    reads = ["/api/cases", f"/api/cases/{cid}", f"/api/cases/{cid}/report.csv", f"/api/cases/{cid}/report.html"]
    writes = [(f"/api/cases/{cid}/{path}", body) for path, body in (
        ("assign", {"assignee": "ana"}), ("notes", {"text": "x"}), ("propose", {"decision": "fraud"}),
        ("reject", {}), ("approve", {}))]
    anon = httpx.Client(base_url=dash.url, timeout=10)
    for path in reads:
        assert anon.get(path).status_code == 401, path
    for path, body in writes:
        assert anon.post(path, json=body).status_code == 401, path
    rm1, csrf_rm = dash.login("rm1")  # RMs never see cases
    for path in reads:
        assert rm1.get(path).status_code == 403, path
    for path, body in writes:
        assert rm1.post(path, json=body, headers={"X-CSRF-Token": csrf_rm}).status_code == 403, path
    root, csrf_root = dash.login("root")  # admins read, masked; they neither act nor export
    for path, body in writes:
        assert root.post(path, json=body, headers={"X-CSRF-Token": csrf_root}).status_code == 403, path
    for path in reads[2:]:
        assert root.get(path).status_code == 403, path
    for path in reads[:2]:
        reply = root.get(path)
        assert reply.status_code == 200 and "c-case-0" not in reply.text and "c-case-1" not in reply.text, path
        assert "two cases" not in reply.text, path  # the notes are masked
    assert "***" in root.get(f"/api/cases/{cid}").text
    # without the CSRF token: 403, nothing changes
    for path, body in writes:
        assert ana.post(path, json=body).status_code == 403, path
    assert ana.get(f"/api/cases/{cid}").json()["log"][-1]["action"] == "approved"
    assert ana.get("/api/cases/case-nope").status_code == 404
    paths = httpx.get(f"{dash.url}/openapi.json").json()["paths"]
    assert {"/api/cases", "/api/cases/{case_id}", "/api/cases/{case_id}/approve",
            "/api/cases/{case_id}/report.csv"} <= set(paths)


def test_an_admin_runs_a_rule_backtest_in_the_background(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """``POST /api/admin/backtest`` runs ``run.py backtest`` on the configured stream in a
    process of its own; its figures are those of the back-test run here, and it is audited."""
    from dataclasses import replace

    from config.settings import load_settings
    from flows.backtest import backtest, parse_change

    events, _ = sim_stream
    with redis_server(tmp_path) as srv:
        settings = engine_settings(srv.url, "bt:", tmp_path)
        settings = replace(settings, dashboard=replace(settings.dashboard, backtest_input=str(events)))
        with dashboard(settings, tmp_path) as dash:
            root, csrf = dash.login("root")
            headers = {"X-CSRF-Token": csrf}
            body = {"changes": ["rules.velocity_1h=5"]}
            ana, csrf_a = dash.login("ana")
            rm1, csrf_rm = dash.login("rm1")
            assert ana.post("/api/admin/backtest", json=body, headers={"X-CSRF-Token": csrf_a}).status_code == 403
            assert rm1.post("/api/admin/backtest", json=body, headers={"X-CSRF-Token": csrf_rm}).status_code == 403
            assert ana.get("/api/admin/backtest").status_code == 403
            assert httpx.post(f"{dash.url}/api/admin/backtest", json=body).status_code == 401
            assert root.post("/api/admin/backtest", json=body).status_code == 403  # no CSRF token
            for bad in (["rules.velocity_1h=5; rm -rf /"], ["fraud.alert_threshold=0.1"], []):
                assert root.post("/api/admin/backtest", json={"changes": bad}, headers=headers).status_code == 422
            started = root.post("/api/admin/backtest", json=body, headers=headers)
            assert started.status_code == 202 and started.json()["status"] == "running"
            assert root.post("/api/admin/backtest", json=body, headers=headers).status_code == 409  # one at a time
            run = wait_for(lambda: next((r for r in root.get("/api/admin/backtest").json()["items"]
                                         if r["status"] != "running"), None), timeout=300)
            assert run["status"] == "done", run
            expected = backtest(load_settings(), events, [parse_change("rules.velocity_1h=5", load_settings())])
            for side in ("current", "changed"):
                for field in ("alerts", "true_positives", "precision", "recall"):
                    assert run["result"][side][field] == expected[side][field], (side, field)
            actions = [e["record"]["action"] for e in root.get("/api/audit?limit=50").json()["items"]
                       if e["record"].get("target") == run["id"]]
            assert sorted(actions) == ["backtest_run", "backtest_started"]


def test_concurrent_approvals_close_once(world: tuple[Dashboard, redis.Redis, str], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dash, client, url = world
    write(url, tmp_path, [alert("c-case-9", 0), alert("c-case-9", 1)])
    ana, csrf = dash.login("ana")
    case = wait_for(lambda: next((c for c in ana.get("/api/cases").json()["items"]
                                  if c["customer_id"] == "c-case-9" and c["alerts"] == 2), None))
    ana.post(f"/api/cases/{case['id']}/propose", json={"decision": "fraud"}, headers={"X-CSRF-Token": csrf})
    sessions = [dash.login("bea") for _ in range(6)]

    def approve(i: int) -> dict:
        bea, token = sessions[i]
        reply = bea.post(f"/api/cases/{case['id']}/approve", headers={"X-CSRF-Token": token})
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(approve, range(6)))
    assert sum(r["changed"] for r in replies) == 1 and all(r["status"] == "closed" for r in replies)
    assert sorted(e["ref_event_id"] for e in sent(client) if e["customer_id"] == "c-case-9") == \
        ["e-c-case-9-0", "e-c-case-9-1"]
