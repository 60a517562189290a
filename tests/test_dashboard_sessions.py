"""Dashboard sessions against a real Redis: server-side sessions that signing out, a changed
role or password and a disabled user revoke (the old cookie gets 401 and an open event
stream ends within a couple of seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from dashboard.auth import add_user
from tests.dashboard_env import PASSWORD, Dashboard, dashboard
from tests.live_engine import engine_settings
from tests.services import RedisServer, redis_server

PREFIX = "ses:"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, RedisServer]]:
    tmp = tmp_path_factory.mktemp("dash-sessions")
    with redis_server(tmp) as srv, dashboard(engine_settings(srv.url, PREFIX), tmp) as dash:
        yield dash, srv


@dataclass
class EventStream:
    """An open ``/api/events`` stream read in a thread, with when it ended."""

    client: httpx.Client
    opened: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.opened.wait(5), "the event stream did not open"

    def _read(self) -> None:
        try:
            with self.client.stream("GET", "/api/events", timeout=httpx.Timeout(10, read=20)) as reply:
                self.status = reply.status_code
                self.opened.set()
                for _ in reply.iter_lines():
                    pass
            self.ended_at = time.monotonic()
        except httpx.ReadTimeout:
            pass

    def ends_within(self, seconds: float) -> float:
        self.thread.join(seconds)
        assert self.ended_at is not None, f"the event stream was still open after {seconds} s"
        return self.ended_at


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
    keys = redis.Redis.from_url(srv.url).keys(f"{PREFIX}dash:session:*")
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
           "CRM__REDIS__KEY_PREFIX": PREFIX, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
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
