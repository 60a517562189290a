"""Authorization of every dashboard endpoint against a real Redis and the engine's own
output: no credentials -> 401, a role that may not -> 403, an RM and another RM's customer
-> 403, a missing CSRF token -> 403, masked identifiers never in an admin's responses, and
customers' event timelines without fraud labels for RMs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from schemas.redis_keys import RedisKeys
from tests.dashboard_env import Dashboard, dashboard
from tests.live_engine import engine_settings, history, inject, live_engine, takeover, wait_for
from tests.services import redis_server

READS = ["/api/me", "/api/alerts", "/api/alerts/{ref}", "/api/customers/{cref}", "/api/rm/prompts", "/api/rm/churn",
         "/api/stats", "/api/audit", "/api/events", "/api/admin/locks"]
WRITES = [("/api/alerts/{ref}/acknowledge", {}), ("/api/alerts/{ref}/assign", {"assignee": "ana"}),
          ("/api/alerts/{ref}/snooze", {"hours": 1}), ("/api/alerts/{ref}/close", {"label": "legit"}),
          ("/api/rm/prompts/{pid}/answer", {"answer": "dismissed"}), ("/api/logout", {}),
          ("/api/admin/unlock", {"username": "ana"})]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("dash-auth")
    with redis_server(tmp) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "da:", tmp, recent_events=20)
        now = time.time()
        with live_engine(settings), dashboard(settings, tmp) as dash:
            inject(client, settings, *history("c-rm1-cust", "rm001", now), *takeover("c-rm1-cust", now),
                   *history("c-rm2-cust", "rm002", now), *takeover("c-rm2-cust", now))
            ana, _ = dash.login("ana")
            items = wait_for(lambda: (page := ana.get("/api/alerts").json()["items"]) and len(page) == 2 and page)
            refs = {a["customer_id"]: a for a in items}
            # a fraud label on rm001's customer: in the analyst's timeline, never in the RM's
            inject(client, settings, {"kind": "feedback", "event_id": "fb-rm1", "customer_id": "c-rm1-cust",
                                      "ts": refs["c-rm1-cust"]["event_ts"], "label": "fraud",
                                      "ref_event_id": "c-rm1-cust-steal"})
            wait_for(lambda: b"fb-rm1" in (client.lindex(RedisKeys("da:").customer_events("c-rm1-cust"), 0) or b""))
            # a prompt in rm002's stream, as the engine writes one
            client.xadd(RedisKeys("da:").rm_prompts("rm002"), {"id": "nb-x", "data": (
                b'{"prompt_id":"nb-x","customer_id":"c-rm2-cust","rm_id":"rm002","action":"rm_call","product_id":null,'
                b'"score":0.1,"reasons":[],"expires_at":"2030-01-01T00:00:00.000Z","policy_version":"p",'
                b'"trigger":"large_credit","event_id":"e-x","event_ts":"2026-01-01T00:00:00.000Z","schema_version":"1"}')})
            rm2, _ = dash.login("rm2")
            wait_for(lambda: rm2.get("/api/rm/prompts").json()["total"] == 1)
            yield dash, {"ref": refs["c-rm2-cust"]["ref"], "cref": refs["c-rm2-cust"]["cref"],
                         "cref1": refs["c-rm1-cust"]["cref"], "pid": "nb-x"}


def fill(path: str, ids: dict[str, str]) -> str:
    return path.format(**ids)


def test_no_credentials_is_401_everywhere(world: tuple[Dashboard, dict[str, str]]) -> None:
    dash, ids = world
    anon = httpx.Client(base_url=dash.url, timeout=10)
    for path in READS:
        assert anon.get(fill(path, ids)).status_code == 401, path
    for path, body in WRITES:
        assert anon.post(fill(path, ids), json=body).status_code == 401, path
    forged = httpx.Client(base_url=dash.url, timeout=10, cookies={"crm_session": "eyJ1IjoiYW5hIn0.AAAA"})
    assert forged.get("/api/alerts").status_code == 401
    assert anon.post("/api/login", json={"username": "ana", "password": "wrong-password"}).status_code == 401


def test_roles_and_ownership_are_enforced(world: tuple[Dashboard, dict[str, str]]) -> None:
    dash, ids = world
    rm1, csrf1 = dash.login("rm1")
    # an RM asking for another RM's customer, or acting on another RM's prompt: 403
    assert rm1.get(f"/api/customers/{ids['cref']}").status_code == 403
    assert rm1.get("/api/customers/cunknown").status_code == 403
    assert rm1.post(f"/api/rm/prompts/{ids['pid']}/answer", json={"answer": "accepted"},
                    headers={"X-CSRF-Token": csrf1}).status_code == 403
    # RMs have no risk view and no fraud data; their own customer, without fraud scores
    for path in ("/api/alerts", f"/api/alerts/{ids['ref']}", "/api/audit"):
        assert rm1.get(path).status_code == 403, path
    own = rm1.get(f"/api/customers/{ids['cref1']}")
    assert own.status_code == 200 and "fraud_score" not in own.json() and own.json()["alerts"] == []
    assert all(p["rm_id"] == "rm001" for p in rm1.get("/api/rm/prompts").json()["items"])
    # analysts cannot use the RM view; admins cannot act; only admins read the audit
    ana, csrf = dash.login("ana")
    assert ana.get("/api/rm/prompts").status_code == 403 and ana.get("/api/audit").status_code == 403
    assert ana.get("/api/admin/locks").status_code == 403
    assert ana.post("/api/admin/unlock", json={"username": "rm1"}, headers={"X-CSRF-Token": csrf}).status_code == 403
    root, csrf_root = dash.login("root")
    for path, body in WRITES[:4]:
        assert root.post(fill(path, ids), json=body, headers={"X-CSRF-Token": csrf_root}).status_code == 403, path
    # a state change without the session's CSRF token: 403, and nothing changed
    assert ana.post(f"/api/alerts/{ids['ref']}/acknowledge", json={}).status_code == 403
    wrong = {"X-CSRF-Token": "0" * 64}
    assert ana.post(f"/api/alerts/{ids['ref']}/acknowledge", json={}, headers=wrong).status_code == 403
    assert ana.get(f"/api/alerts/{ids['ref']}").json()["status"] == "open"
    assert ana.post(f"/api/alerts/{ids['ref']}/acknowledge", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    reply = ana.get("/api/alerts")
    assert reply.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["cache-control"] == "no-store" and reply.headers["x-content-type-options"] == "nosniff"


def test_masked_identifiers_never_reach_an_admin(world: tuple[Dashboard, dict[str, str]]) -> None:
    dash, ids = world
    root, _ = dash.login("root")
    ana, _ = dash.login("ana")
    bodies = [root.get(fill(path, ids)).text for path in
              ("/api/alerts", "/api/alerts?status=all", "/api/alerts/{ref}", "/api/customers/{cref}", "/api/stats",
               "/api/audit")]
    with root.stream("GET", "/api/events") as events:  # the live stream too
        ana.post(f"/api/alerts/{ids['ref']}/assign", json={"assignee": "ana"},
                 headers={"X-CSRF-Token": ana.get("/api/me").json()["csrf"]})
        for line in events.iter_lines():
            if line.startswith("data:"):
                bodies.append(line)
                break
    assert len(bodies) == 7 and all(bodies)
    for body in bodies:
        assert "c-rm1-cust" not in body and "c-rm2-cust" not in body, body[:300]
    assert "***" in bodies[0]
    # the analyst sees them
    assert "c-rm2-cust" in ana.get("/api/alerts").text


def test_timelines_merge_the_customers_events_as_each_role_may_see_them(
        world: tuple[Dashboard, dict[str, str]]) -> None:
    dash, ids = world
    ana, _ = dash.login("ana")
    timeline = ana.get(f"/api/alerts/{ids['ref']}").json()["customer"]["timeline"]
    order = [t["event_id"] for t in timeline]
    # newest first: the alert above the transaction that triggered it, then the reset, the history
    assert order[:3] == ["c-rm2-cust-steal"] * 2 + ["c-rm2-cust-reset"], order
    assert [t["kind"] for t in timeline[:2]] == ["alert", "event"]
    # then the history (the profile is not activity), then the older prompt
    assert order[3:] == [*(f"c-rm2-cust-h{i}" for i in range(5, -1, -1)), "e-x"], order
    steal = timeline[1]
    assert steal["event"]["counterparty_id"] == "p-unknown" and steal["event"]["amount"] == 48_000.0
    assert "to p-unknown" in steal["what"] and "device_id" not in steal["event"]
    # an admin sees the same timeline with payees masked
    root, _ = dash.login("root")
    for path in (f"/api/alerts/{ids['ref']}", f"/api/customers/{ids['cref']}"):
        reply = root.get(path)
        shown = reply.json().get("customer", reply.json())["timeline"]
        assert [t["kind"] for t in shown] == [t["kind"] for t in timeline], path
        payees = [t["event"].get("counterparty_id") for t in shown if t["kind"] == "event"]
        assert set(payees) == {"***", None} and payees.count("***") == 7, path  # the app event has none
        assert "p-unknown" not in reply.text and "m-grocer" not in reply.text, path
    # the analyst sees the fraud label on rm001's customer; the RM sees the events, not the label
    analyst_view = ana.get(f"/api/customers/{ids['cref1']}").json()["timeline"]
    assert any(t["event_id"] == "fb-rm1" and t["event"]["label"] == "fraud" for t in analyst_view)
    rm1, _ = dash.login("rm1")
    reply = rm1.get(f"/api/customers/{ids['cref1']}")
    rm_view = reply.json()["timeline"]
    assert {t["event_id"] for t in rm_view} >= {"c-rm1-cust-steal", "c-rm1-cust-reset", "c-rm1-cust-h0"}
    assert all(t["kind"] == "event" for t in rm_view)  # the takeover alert is fraud data too
    assert "fb-rm1" not in reply.text and '"fraud"' not in reply.text and "legit" not in reply.text


def test_the_openapi_description_lists_every_endpoint(world: tuple[Dashboard, dict[str, str]]) -> None:
    dash, _ = world
    paths = httpx.get(f"{dash.url}/openapi.json").json()["paths"]
    for path in [*READS, *(p for p, _ in WRITES)]:
        assert path.replace("{pid}", "{prompt_id}") in paths, path


def test_add_user_cli_writes_hashes_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    users = tmp_path / "u.toml"
    result = subprocess.run([sys.executable, "run.py", "dashboard", "add-user", "zoe", "--role", "rm", "--rm-id",
                             "rm009", "--password-stdin"], input="zoe-secret-password\n", capture_output=True,
                            text=True, env={"CRM__DASHBOARD__USERS_FILE": str(users), "PATH": "/usr/bin:/bin"},
                            check=False)
    assert result.returncode == 0, result.stderr
    text = users.read_text()
    assert "zoe-secret-password" not in text and "scrypt$" in text and oct(users.stat().st_mode)[-3:] == "600"
