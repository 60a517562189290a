"""A dashboard served over a private Redis, with one user per role, for the tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from config.settings import Settings
from dashboard.auth import UserStore, add_user
from dashboard.metrics import DashboardMetrics
from dashboard.server import start_in_thread
from tests.brokers import free_port

PASSWORD = "a-long-test-password"
USERS = (("ana", "risk_analyst", ""), ("bea", "risk_analyst", ""), ("root", "admin", ""), ("rm1", "rm", "rm001"),
         ("rm2", "rm", "rm002"))


@dataclass
class Dashboard:
    url: str
    server: object
    users_file: Path

    def login(self, username: str) -> tuple[httpx.Client, str]:
        client = httpx.Client(base_url=self.url, timeout=10)
        reply = client.post("/api/login", json={"username": username, "password": PASSWORD})
        reply.raise_for_status()
        return client, reply.json()["csrf"]


@contextmanager
def dashboard(settings: Settings, tmp: Path, insecure_http: bool = True,
              metrics: DashboardMetrics | None = None) -> Iterator[Dashboard]:
    """Served over plain HTTP, so with ``insecure_http`` (cookies without Secure) unless told;
    measured by ``metrics`` if given."""
    users_file = tmp / "users.toml"
    for name, role, rm in USERS:
        add_user(users_file, name, role, PASSWORD, rm)
    settings = replace(settings, dashboard=replace(settings.dashboard, users_file=str(users_file),
                                                   secret="test-secret-of-enough-length", insecure_http=insecure_http))
    port = free_port()
    server, thread = start_in_thread(settings, "127.0.0.1", port, UserStore.load(users_file), metrics)
    deadline = time.monotonic() + 20
    while not getattr(server, "started", False):
        assert time.monotonic() < deadline and thread.is_alive(), "the dashboard did not start"
        time.sleep(0.05)
    try:
        yield Dashboard(f"http://127.0.0.1:{port}", server, users_file)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(10)


@dataclass
class EventStream:
    """An open ``/api/events`` stream read in a thread: the events received so far (their
    kind and data, as they come), and when it ended."""

    client: httpx.Client
    opened: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    status: int | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.opened.wait(5), "the event stream did not open"

    def _read(self) -> None:
        try:
            with self.client.stream("GET", "/api/events", timeout=httpx.Timeout(10, read=20)) as reply:
                self.status = reply.status_code
                self.opened.set()
                kind = ""
                for line in reply.iter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.events.append((kind, line.removeprefix("data: ")))
            self.ended_at = time.monotonic()
        except httpx.ReadTimeout:
            pass

    def ends_within(self, seconds: float) -> float:
        self.thread.join(seconds)
        assert self.ended_at is not None, f"the event stream was still open after {seconds} s"
        return self.ended_at


def sign_in(browser: Any, url: str, username: str) -> Any:
    """A new page of ``browser`` (Playwright's) signed in as ``username``, its live stream open."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(url)
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#live.on", state="attached")  # the live stream is open
    return page
