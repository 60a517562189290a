"""The engine running live in a background thread with the Redis input stream as its only
source of events, for tests that inject events and watch what comes out in Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis
from bytewax.testing import TestingSource, run_main
from prometheus_client import CollectorRegistry

from config.settings import Settings, load_settings
from flows.modes import live_flow
from ops import EngineMetrics, Telemetry
from ops.health import Readiness
from schemas.outputs import format_ts
from schemas.redis_keys import RedisKeys
from tests.conftest import audit_key_file


def engine_settings(url: str, prefix: str, key_dir: Path, audit: bool = True, recent_events: int = 0) -> Settings:
    """Redis delivery, the Redis input stream, (optionally) the Redis audit log and each
    customer's ``recent_events`` latest events on; the audit key file (which the dashboard
    needs too) in ``key_dir``."""
    s = load_settings(environ={})
    return replace(s, redis=replace(s.redis, enabled=True, url=url, key_prefix=prefix,
                                    input_stream="feedback:in", recent_events=recent_events),
                   audit=replace(s.audit, redis=audit, key_file=str(audit_key_file(key_dir))))


@contextmanager
def live_engine(settings: Settings, registry: CollectorRegistry | None = None) -> Iterator[threading.Thread]:
    """Run the engine until the block ends (then stop it and wait for it to drain); with a
    ``registry``, its metrics are wired there as ``--metrics-port`` wires them."""
    stop = threading.Event()
    telemetry = None
    if registry is not None:
        metrics = EngineMetrics(registry, ("redis",), alert_threshold=settings.fraud.alert_threshold)
        telemetry = Telemetry(metrics, Readiness(stop))
    flow = live_flow(settings, TestingSource([]), console=False, stop=stop, telemetry=telemetry)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_main(flow)
        except BaseException as exc:  # handed to the test when it ends
            failure.append(exc)

    thread = threading.Thread(target=run, name="engine", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the engine did not stop"
        if failure:
            raise failure[0]


def inject(client: redis.Redis, settings: Settings, *events: dict[str, Any]) -> None:
    """Add events to the engine's input stream, as the dashboard adds its feedback."""
    key = RedisKeys(settings.redis.key_prefix).input_stream(settings.redis.input_stream)
    for event in events:
        client.xadd(key, {"data": orjson.dumps(event)})


def history(customer: str, rm: str, now: float, n: int = 6) -> list[dict[str, Any]]:
    """A profile and ``n`` ordinary card payments over the days before ``now``."""
    events: list[dict[str, Any]] = [{"kind": "profile", "event_id": f"{customer}-p", "ts": format_ts(now - 9 * 86400),
                                     "customer_id": customer, "rm_id": rm, "segment": "affluent", "risk_level": 3}]
    events += [{"kind": "transaction", "event_id": f"{customer}-h{i}", "ts": format_ts(now - (8 - i) * 86400),
                "customer_id": customer, "amount": 120.0 + i, "txn_type": "card_payment", "channel": "pos",
                "counterparty_id": "m-grocer", "device_id": "d-home"} for i in range(n)]
    return events


def takeover(customer: str, now: float) -> list[dict[str, Any]]:
    """A password reset, then a large transfer to a new payee from a new device: the
    takeover rule fires (an alert for review whatever the score)."""
    return [{"kind": "app", "event_id": f"{customer}-reset", "ts": format_ts(now - 600), "customer_id": customer,
             "action": "password_reset", "device_id": "d-new"},
            {"kind": "transaction", "event_id": f"{customer}-steal", "ts": format_ts(now), "customer_id": customer,
             "amount": 48_000.0, "txn_type": "transfer", "channel": "app", "counterparty_id": "p-unknown",
             "device_id": "d-new"}]


def wait_for(check: Any, timeout: float = 20.0, every: float = 0.02, what: str | None = None) -> Any:
    """Poll until ``check()`` returns something truthy; that value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout:.0f} s: {what or check}")
