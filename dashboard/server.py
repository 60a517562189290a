"""Starting the dashboard: from the settings, in the foreground (``run.py dashboard``) or
in a thread beside the engine (``run.py``, the built-in simulator demo)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any

from config.settings import Settings
from dashboard.app import DashboardConfig, create_app
from dashboard.auth import UserStore
from dashboard.logins import LoginPolicy
from dashboard.metrics import DashboardMetrics
from dashboard.store import Auditor, Store
from schemas.audit import AuditKeys
from schemas.redis_keys import RedisKeys
from schemas.redis_url import RedisEndpoint
from sinks.redis_client import connect, connect_async, initialized


def build_app(settings: Settings, users: UserStore | None = None, metrics: DashboardMetrics | None = None) -> Any:
    """The application over ``[redis]``; users' actions are audited with the key file of
    ``[audit] key_file`` (``schemas.audit.AuditKeyError`` if it is not set or not valid);
    with ``metrics``, measured."""
    d, r = settings.dashboard, settings.redis
    keys = AuditKeys.load(settings.audit.key_file)
    client = connect_async(r.endpoint(), r.socket_timeout_s)
    store = Store(client, r.key_prefix, d.feedback_stream, d.feedback_time, settings.audit.redis_key,
                  settings.display.locale)
    secret = d.secret.encode() if d.secret else secrets.token_bytes(32)
    return create_app(store, users or UserStore.load(d.users_file),
                      DashboardConfig(secret, keys, d.session_ttl_s, not d.insecure_http, d.page_size_max,
                                      login=login_policy(settings), locale=settings.display.locale,
                                      timezone=settings.display.zone, pii=settings.crypto.sealer(),
                                      backtest_input=d.backtest_input, backtest_config=d.backtest_config,
                                      backtest_timeout_s=d.backtest_timeout_s),
                      metrics=metrics)


def login_policy(settings: Settings) -> LoginPolicy:
    d = settings.dashboard
    return LoginPolicy(d.login_window_s, d.login_free_failures, d.login_ip_free_failures, d.login_backoff_s,
                       d.login_backoff_max_s, d.lockout_failures, d.lockout_s)


def server(settings: Settings, host: str | None = None, port: int | None = None,
           users: UserStore | None = None, metrics: DashboardMetrics | None = None) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn waits for every open connection to finish; an event stream never does
            # by itself, so the hub ends them first (else a stop hangs until it is killed).
            app.state.hub.close()
            await super().shutdown(sockets)

    d = settings.dashboard
    app = build_app(settings, users, metrics)
    config = uvicorn.Config(app, host=host or d.host, port=port if port is not None else d.port,
                            log_level="warning", access_log=False, server_header=False)
    return Server(config)


def start_in_thread(settings: Settings, host: str | None = None, port: int | None = None,
                    users: UserStore | None = None, metrics: DashboardMetrics | None = None
                    ) -> tuple[Any, threading.Thread]:
    """Serve in a daemon thread; ``server.should_exit = True`` stops it."""
    srv = server(settings, host, port, users, metrics)
    thread = threading.Thread(target=srv.run, name="dashboard", daemon=True)
    thread.start()
    return srv, thread


def operator_auditor(client: Any, settings: Settings) -> Auditor:
    """The audit writer of an operator's command (``run.py dashboard ...``), with the key file of
    ``[audit] key_file`` (``schemas.audit.AuditKeyError`` if it is not set or not valid)."""
    return Auditor(client, RedisKeys(settings.redis.key_prefix).audit_log(settings.audit.redis_key),
                   AuditKeys.load(settings.audit.key_file))


def revoke_sessions(settings: Settings, username: str, action: str, detail: str, by: str) -> int | None:
    """Sign every session of ``username`` out, in Redis, and audit it (``action``, by the
    operator ``by``); how many sessions there were, or None if Redis is unreachable."""
    import redis

    from dashboard.sessions import SessionStore

    r = settings.redis

    async def revoke() -> int:
        client = await initialized(connect_async(r.endpoint(), r.socket_timeout_s, min(r.socket_timeout_s, 2.0)))
        try:
            count = await SessionStore(client, RedisKeys(r.key_prefix), settings.dashboard.session_ttl_s
                                       ).revoke_user(username)
            await operator_auditor(client, settings).record(
                action, by, "operator", username, None, f"{detail}; {count} sessions revoked")
            return count
        finally:
            await client.aclose()

    try:
        return asyncio.run(revoke())
    except (redis.RedisError, OSError):
        return None


def unlock_user(settings: Settings, username: str, by: str) -> dict[str, str] | None:
    """Lift the lock of ``username`` (and clear its failures) and audit it; what the lock
    held, or None if it was not locked. Raises ``redis.RedisError`` or ``OSError`` if Redis
    is unreachable."""
    from dashboard.logins import LoginGuard

    r = settings.redis

    async def unlock() -> dict[str, str] | None:
        client = await initialized(connect_async(r.endpoint(), r.socket_timeout_s, min(r.socket_timeout_s, 2.0)))
        try:
            held = await LoginGuard(client, RedisKeys(r.key_prefix), login_policy(settings)).unlock(username)
            if held is not None:
                await operator_auditor(client, settings).record(
                    "login_unlocked", by, "operator", username, None,
                    f"locked after {held.get('failures', '?')} failed sign-ins; {held.get('refused', '0')} "
                    f"attempts refused while locked")
            return held
        finally:
            await client.aclose()

    return asyncio.run(unlock())


def redis_reachable(url: str | RedisEndpoint, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        client = connect(url, timeout_s)  # a cluster's client reads the cluster's nodes here
    except redis.RedisError:
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
