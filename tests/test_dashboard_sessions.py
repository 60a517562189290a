"""Dashboard sessions and sign-ins against a real Redis: server-side sessions that signing
out, a changed role or password and a disabled user revoke (the old cookie gets 401 and an
open event stream ends within a couple of seconds); failed sign-ins throttled per username
and per address, a lockout an admin lifts, and an audit trail that failures cannot grow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from dashboard.auth import add_user
from tests.conftest import audit_key_file
from tests.dashboard_env import PASSWORD, Dashboard, EventStream, dashboard
from tests.live_engine import engine_settings
from tests.services import RedisServer, redis_server

PREFIX = "ses:"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, RedisServer]]:
    tmp = tmp_path_factory.mktemp("dash-sessions")
    with redis_server(tmp) as srv, dashboard(engine_settings(srv.url, PREFIX, tmp), tmp) as dash:
        yield dash, srv


def with_cookie(dash: Dashboard, cookie: str) -> httpx.Client:
    return httpx.Client(base_url=dash.url, timeout=10, cookies={"crm_session": cookie})


def test_signing_out_revokes_the_session_and_ends_its_event_stream(world: tuple[Dashboard, RedisServer]) -> None:
    dash, srv = world
    ana, csrf = dash.login("ana")
    cookie = ana.cookies["crm_session"]
    stream = EventStream(with_cookie(dash, cookie))
    assert stream.status == 200
    other, _ = dash.login("ana")  # another session of the same user stays open
    assert ana.get("/api/alerts").status_code == 200
    assert ana.post("/api/logout", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    signed_out = time.monotonic()
    old = with_cookie(dash, cookie)  # the cookie as it was before signing out
    for path in ("/api/me", "/api/alerts", "/api/stats", "/api/events"):
        assert old.get(path).status_code == 401, path
    assert old.post("/api/alerts/x/acknowledge", json={}, headers={"X-CSRF-Token": csrf}).status_code == 401
    assert stream.ends_within(3) - signed_out < 2.5
    assert other.get("/api/alerts").status_code == 200
    keys = redis.Redis.from_url(srv.url).keys(f"{PREFIX}{{dash}}:session:*")
    assert len(keys) == 1  # the other session's, and no session id in clear: its SHA-256
    assert other.cookies["crm_session"].split(".")[0] not in keys[0].decode()


def test_a_changed_role_or_password_ends_the_users_sessions(world: tuple[Dashboard, RedisServer]) -> None:
    dash, _ = world
    rm1, _ = dash.login("rm1")
    stream = EventStream(with_cookie(dash, rm1.cookies["crm_session"]))
    # a new password written to the users file (not through the CLI, so Redis is not told):
    # the dashboard reads the file again and the session no longer matches the user
    add_user(dash.users_file, "rm1", "rm", "a-new-and-long-password", "rm001")
    changed = time.monotonic()
    assert stream.ends_within(4) - changed < 3.0
    assert rm1.get("/api/rm/prompts").status_code == 401
    fresh = httpx.Client(base_url=dash.url, timeout=10)
    assert fresh.post("/api/login", json={"username": "rm1", "password": PASSWORD}).status_code == 401
    assert fresh.post("/api/login", json={"username": "rm1", "password": "a-new-and-long-password"}
                      ).status_code == 200


def run_cli(dash: Dashboard, srv: RedisServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"CRM__DASHBOARD__USERS_FILE": str(dash.users_file), "CRM__REDIS__URL": srv.url,
           "CRM__REDIS__KEY_PREFIX": PREFIX, "CRM__AUDIT__KEY_FILE": str(audit_key_file(dash.users_file.parent)),
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "run.py", "dashboard", *args], input=stdin, capture_output=True,
                          text=True, env=env, check=False, timeout=60)


def test_the_cli_revokes_sessions_on_a_role_change_and_on_disabling(world: tuple[Dashboard, RedisServer]) -> None:
    dash, srv = world
    rm2, _ = dash.login("rm2")
    stream = EventStream(with_cookie(dash, rm2.cookies["crm_session"]))
    result = run_cli(dash, srv, "add-user", "rm2", "--role", "risk_analyst", "--password-stdin", "--by", "ops",
                     stdin=PASSWORD + "\n")
    # (a dashboard that read the changed file first may have ended the session already)
    assert result.returncode == 0 and " sessions of rm2 revoked" in result.stdout, result.stderr
    assert rm2.get("/api/rm/prompts").status_code == 401
    stream.ends_within(3)
    again, _ = dash.login("rm2")
    assert again.get("/api/me").json()["role"] == "risk_analyst"
    # disabling: the sessions end and the user cannot sign in
    result = run_cli(dash, srv, "disable-user", "rm2", "--by", "ops")
    assert result.returncode == 0 and " sessions of rm2 revoked" in result.stdout, result.stderr
    assert again.get("/api/me").status_code == 401
    refused = httpx.post(f"{dash.url}/api/login", json={"username": "rm2", "password": PASSWORD})
    assert refused.status_code == 401
    root, _ = dash.login("root")
    audited = [(e["record"]["action"], e["record"]["username"], e["record"]["target"])
               for e in root.get("/api/audit").json()["items"]]
    assert ("user_changed", "ops", "rm2") in audited and ("user_disabled", "ops", "rm2") in audited


# -- failed sign-ins: back-off, lockout, unlock, a bounded audit trail ----------------------


_clients: dict[str, httpx.Client] = {}


def sign_in(dash: Dashboard, username: str, password: str, ip: str) -> httpx.Response:
    """One attempt from ``ip`` (uvicorn takes the client address from ``X-Forwarded-For``
    when the connection comes from 127.0.0.1, as from a local reverse proxy), over one kept
    connection per dashboard."""
    if dash.url not in _clients:
        _clients[dash.url] = httpx.Client(base_url=dash.url, timeout=10)
    client = _clients[dash.url]
    client.cookies.clear()
    return client.post("/api/login", json={"username": username, "password": password},
                       headers={"X-Forwarded-For": ip})


def audited(dash: Dashboard, target: str) -> list[dict]:
    root, _ = dash.login("root")
    return [e["record"] for e in reversed(root.get("/api/audit?limit=500").json()["items"])
            if target in (e["record"].get("target"), e["record"].get("username"))]


def test_twenty_wrong_passwords_are_throttled_and_the_right_one_waits(world: tuple[Dashboard, RedisServer]) -> None:
    dash, _ = world
    ip = "198.51.100.1"
    started = time.monotonic()
    replies = [sign_in(dash, "ana", f"wrong-password-{i}", ip) for i in range(20)]
    took = time.monotonic() - started
    statuses = [r.status_code for r in replies]
    # three free failures, then each attempt waits 1 s, 2 s, 4 s ... after the last failure:
    # one more may be checked if these twenty took over a second on a busy machine
    assert statuses[:4] == [401, 401, 401, 429], statuses
    assert statuses.count(401) <= 3 + (took > 1.0) + (took > 3.0), (statuses, took)
    assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 429)
    # the right password is not even checked while the username must wait
    right = sign_in(dash, "ana", PASSWORD, ip)
    assert right.status_code == 429
    time.sleep(int(right.headers["retry-after"]) + 0.1)
    assert sign_in(dash, "ana", PASSWORD, ip).status_code == 200
    # one audit entry for the burst, and its count in the sign-in's entry
    entries = [r for r in audited(dash, "ana") if r["action"].startswith("login")]
    assert [r["action"] for r in entries][-2:] == ["login_failed", "login"]
    assert "198.51.100.1" in entries[-2]["detail"]
    failed = statuses.count(401)
    assert entries[-1]["detail"] == f"after {failed} failed sign-ins and {21 - failed} throttled attempts"
    assert sign_in(dash, "ana", "wrong-again", ip).status_code == 401  # the count started again


def test_many_usernames_from_one_address_are_throttled(world: tuple[Dashboard, RedisServer]) -> None:
    dash, _ = world
    ip = "198.51.100.2"
    replies = [sign_in(dash, f"guess{i}", "wrong-password", ip) for i in range(12)]
    assert [r.status_code for r in replies] == [401] * 10 + [429] * 2
    assert sign_in(dash, "rm1", "a-new-and-long-password", ip).status_code == 429
    assert sign_in(dash, "root", PASSWORD, "198.51.100.3").status_code == 200


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, RedisServer]]:
    """No back-off, a lock after 10 failures: every attempt checks its password until then."""
    from dataclasses import replace

    tmp = tmp_path_factory.mktemp("dash-lockout")
    with redis_server(tmp) as srv:
        settings = engine_settings(srv.url, PREFIX, tmp)
        settings = replace(settings, dashboard=replace(settings.dashboard, login_backoff_s=0.0,
                                                       lockout_failures=10, lockout_s=600.0))
        with dashboard(settings, tmp) as dash:
            yield dash, srv


def test_two_hundred_wrong_passwords_lock_the_user_with_two_audit_entries(
        strict: tuple[Dashboard, RedisServer]) -> None:
    dash, _ = strict
    ip = "203.0.113.9"
    statuses = [sign_in(dash, "ana", f"wrong-password-{i}", ip).status_code for i in range(200)]
    assert statuses == [401] * 10 + [423] * 190
    assert sign_in(dash, "ana", PASSWORD, ip).status_code == 423  # locked even for the right password
    assert sign_in(dash, "ana", PASSWORD, "203.0.113.10").status_code == 423  # from anywhere
    entries = [r["action"] for r in audited(dash, "ana")]
    assert entries.count("login_failed") == 1 and entries.count("login_locked") == 1
    # an unknown username is locked the same way (the answers do not tell which users exist)
    assert [sign_in(dash, "ghost", "x-password", ip).status_code for _ in range(11)] == [401] * 10 + [423]
    # only an admin sees and lifts locks
    ana_like, csrf = dash.login("rm2")
    assert ana_like.get("/api/admin/locks").status_code == 403
    assert ana_like.post("/api/admin/unlock", json={"username": "ana"}, headers={"X-CSRF-Token": csrf}
                         ).status_code == 403
    root, root_csrf = dash.login("root")
    locks = {lock["username"]: lock for lock in root.get("/api/admin/locks").json()["items"]}
    assert set(locks) == {"ana", "ghost"} and locks["ana"]["failures"] == 10
    assert locks["ana"]["refused_while_locked"] == 192 and locks["ana"]["last_ip"] == ip
    assert root.post("/api/admin/unlock", json={"username": "ana"}, headers={}).status_code == 403  # CSRF
    lifted = root.post("/api/admin/unlock", json={"username": "ana"}, headers={"X-CSRF-Token": root_csrf})
    assert lifted.json() == {"username": "ana", "was_locked": True}
    assert sign_in(dash, "ana", PASSWORD, ip).status_code == 200
    again = root.post("/api/admin/unlock", json={"username": "ana"}, headers={"X-CSRF-Token": root_csrf})
    assert again.json()["was_locked"] is False
    unlocks = [r for r in audited(dash, "ana") if r["action"] == "login_unlocked"]
    assert len(unlocks) == 1 and unlocks[0]["username"] == "root" and "192 attempts refused" in unlocks[0]["detail"]


def test_a_sign_in_clears_the_count_and_the_cli_unlocks(strict: tuple[Dashboard, RedisServer]) -> None:
    dash, srv = strict
    ip = "203.0.113.20"
    assert {sign_in(dash, "rm1", "wrong-password", ip).status_code for _ in range(9)} == {401}
    assert sign_in(dash, "rm1", PASSWORD, ip).status_code == 200
    assert {sign_in(dash, "rm1", "wrong-password", ip).status_code for _ in range(9)} == {401}
    assert sign_in(dash, "rm1", "wrong-password", ip).status_code == 401  # the tenth since the sign-in: locks
    assert sign_in(dash, "rm1", PASSWORD, ip).status_code == 423
    result = run_cli(dash, srv, "unlock", "rm1", "--by", "ops")
    assert result.returncode == 0 and result.stdout.strip() == "rm1 unlocked", result.stderr
    assert sign_in(dash, "rm1", PASSWORD, ip).status_code == 200
    assert [r["username"] for r in audited(dash, "rm1") if r["action"] == "login_unlocked"] == ["ops"]


def test_stopping_the_dashboard_ends_its_open_event_streams_at_once(tmp_path: Path) -> None:
    """uvicorn waits for open connections before it stops; an event stream never ends by
    itself, so a stop would hang (until killed) without the hub ending the streams."""
    with redis_server(tmp_path) as srv:
        with dashboard(engine_settings(srv.url, PREFIX, tmp_path), tmp_path) as dash:
            ana, _ = dash.login("ana")
            stream = EventStream(ana)
            assert stream.status == 200
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3.0
        assert stream.ends_within(1) - stopping < 3.0


def test_cookies_are_secure_unless_plain_http_is_asked_for(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        settings = engine_settings(srv.url, PREFIX, tmp_path)
        assert settings.dashboard.insecure_http is False  # the default
        (tmp_path / "secure").mkdir()
        with dashboard(settings, tmp_path / "secure", insecure_http=False) as dash:
            client = httpx.Client(base_url=dash.url, timeout=10)
            reply = client.post("/api/login", json={"username": "ana", "password": PASSWORD})
            assert reply.status_code == 200
            cookie = reply.headers["set-cookie"].lower()
            assert "; secure" in cookie and "; httponly" in cookie and "samesite=strict" in cookie
            assert reply.headers["strict-transport-security"] == "max-age=31536000"
            assert client.get("/api/me").status_code == 401  # a Secure cookie never travels over plain HTTP
        (tmp_path / "dev").mkdir()
        with dashboard(settings, tmp_path / "dev", insecure_http=True) as dash:
            reply = httpx.post(f"{dash.url}/api/login", json={"username": "ana", "password": PASSWORD})
            assert reply.status_code == 200 and "secure" not in reply.headers["set-cookie"].lower()
            assert "strict-transport-security" not in reply.headers
