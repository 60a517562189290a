"""The dashboard's web application: JSON API, live updates (server-sent events), pages.

Authorization is decided on the server for every request, from the signed session cookie
(``dashboard.auth``), the session it names in Redis (``dashboard.sessions``: signed out or
revoked, it is refused) and the user's entry in the users file as it is now (a removed or
disabled user, or a changed role or password, ends the user's sessions):

- ``risk_analyst``: the risk view (every alert, customer details with identifiers);
  acknowledge, assign, snooze, close as fraud / false positive.
- ``rm``: the RM view: prompts and churn warnings of the RM's own customers, and those
  customers' details without fraud data (no tipping-off); accept, dismiss, mark converted.
- ``admin``: the risk view and plots read-only with customer identifiers (and the payees
  and payers in timelines) masked; the audit trail.

No credentials: 401. A role that may not use an endpoint, or an RM asking about another RM's
customer (or an unknown one): 403. Every state-changing request needs the session's CSRF
token in ``X-CSRF-Token``. Failed sign-ins are throttled and lock a username
(``dashboard.logins``); an admin lifts locks. Every action and sign-in goes to the audit
trail; failed sign-ins are summarised there (the first of a burst, the lockout, the count in
the next sign-in), so failing to sign in cannot grow it.
With ``[crypto] enabled``, what the engine stored sealed (``schemas.crypto``: payees and
payers in timelines, any other personal field) is opened for analysts and RMs (within what
their role shows at all) and masked for admins, who never need the key's output; an envelope
that does not open is an error naming the field and the key id (500), never shown as text.
Responses carry security headers (a strict Content-Security-Policy: the pages load only
their own scripts and styles) and ``Cache-Control: no-store``.

Given a ``dashboard.metrics.DashboardMetrics``, the application counts its requests by route
template, times them, and counts the open event streams, users' actions and failed sign-ins
(served on a port of their own, not here).
"""


import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from dashboard.auth import Session, Signer, UserStore
from dashboard.backtests import CHANGE, Backtests, Busy
from dashboard.cases import (
    Cases,
    Conflict,
    SameAnalyst,
    report_csv,
    report_html,
    report_rows,
)
from dashboard.logins import Attempt, LoginGuard, LoginPolicy
from dashboard.metrics import DashboardMetrics, MeasureRequests
from dashboard.sessions import SessionStore
from dashboard.store import (
    ALERT_TYPES,
    ANSWERS,
    FRAUD_LABELS,
    SEVERITIES,
    STATUSES,
    Auditor,
    NotFound,
    Page,
    Store,
    alert_verdict,
    describe_event,
    prompt_verdict,
)
from schemas.audit import AuditKeys
from schemas.crypto import CannotDecrypt, Sealer, masked
from schemas.outputs import RM_ALERTS, format_ts
from schemas.texts import EN, localized_text
from sinks.redis_client import is_cluster

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
COOKIE = "crm_session"
MASK = "***"
KEEP_ALIVE_S = 15.0  # an idle event stream gets a comment this often (proxies close silent ones)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class DashboardConfig:
    """What the application needs besides Redis (from ``[dashboard]`` and ``[redis]``)."""

    secret: bytes
    audit_keys: AuditKeys  # the audit log's key file (users' actions are appended to it)
    session_ttl_s: float = 8 * 3600.0
    secure_cookies: bool = True  # Secure cookies and HSTS; False only for plain-HTTP development
    page_size_max: int = 200
    session_check_s: float = 1.0  # how often an open event stream checks that its session is still open
    login: LoginPolicy = field(default_factory=LoginPolicy)
    locale: str = EN  # [display]: the language of the pages, reasons and timelines
    timezone: str = "UTC"  # the time zone times are shown in
    pii: Sealer | None = None  # [crypto]: opens the personal fields the engine sealed
    backtest_input: str = ""  # the recorded stream of the admin's rule back-test ("" = off)
    backtest_config: str = ""  # the config file the back-test's process loads
    backtest_timeout_s: float = 1800.0


# -- live updates ---------------------------------------------------------------------------


Allow = Callable[[str, dict[str, Any]], dict[str, Any] | None]


class Hub:
    """Fans indexed alerts, prompts and status changes out to the open event streams; each
    subscriber gets only what its user may see (its ``allow`` function) and is dropped if it
    falls 1,000 messages behind (the page reconnects and reloads)."""

    def __init__(self) -> None:
        self._subs: dict[int, tuple[Allow, asyncio.Queue[bytes]]] = {}
        self._next = 0
        self.closed = False

    def close(self) -> None:
        """End every open stream: the server is stopping, and waits for its open connections
        (the pages reconnect, to a server that runs). A stream gets an empty message."""
        self.closed = True
        for _, queue in self._subs.values():
            with contextlib.suppress(asyncio.QueueFull):  # a full one sees ``closed`` within a second
                queue.put_nowait(b"")

    def subscribe(self, allow: Allow) -> tuple[int, asyncio.Queue[bytes]]:
        self._next += 1
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        self._subs[self._next] = (allow, queue)
        return self._next, queue

    def unsubscribe(self, sid: int) -> None:
        self._subs.pop(sid, None)

    def publish(self, kind: str, item: dict[str, Any]) -> None:
        for sid, (allow, queue) in list(self._subs.items()):
            shown = allow(kind, item)
            if shown is None:
                continue
            try:
                queue.put_nowait(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(shown) + b"\n\n")
            except asyncio.QueueFull:
                self.unsubscribe(sid)  # a client this far behind reconnects and reloads


class Indexer:
    """Follows the engine's alert stream and every RM prompt stream into the store's index
    and the hub. Its positions are kept in Redis (``{prefix}dash:cursors``), so a restarted
    dashboard carries on; indexing is idempotent by alert revision and prompt id."""

    def __init__(self, store: Store, hub: Hub, block_ms: int = 500, cases: Cases | None = None,
                 auditor: Auditor | None = None) -> None:
        self.store, self.hub, self.block_ms = store, hub, block_ms
        self.cases, self.auditor = cases, auditor
        self.indexed = 0
        self._cluster = is_cluster(store.r)

    async def _read(self, streams: dict[str, str]) -> Any:
        """New entries of ``streams``: one ``XREAD BLOCK`` on a single Redis; on a Redis
        Cluster (the streams are in different slots: the alerts stream in ``{engine}``'s, each
        RM's in its own) one ``XREAD`` per stream, pipelined, and a pause of ``block_ms``
        when none had anything."""
        r = self.store.r
        if not self._cluster:
            return await r.xread(streams, count=500, block=self.block_ms)
        pipe = r.pipeline(transaction=False)
        for key, last in streams.items():
            pipe.xread({key: last}, count=500)
        reply = [item for part in await pipe.execute() for item in part or ()]
        if not reply:
            await asyncio.sleep(self.block_ms / 1000)
        return reply

    async def _case(self, summary: dict[str, Any]) -> None:
        """Put a fraud alert in its customer's open case (``dashboard.cases``), audited."""
        if self.cases is None:
            return
        joined = await self.cases.join(summary)
        if joined is None:
            return
        case_id, opened = joined
        if self.auditor is not None:
            await self.auditor.record("case_opened" if opened else "case_alert_joined", "dashboard", "-", case_id,
                                      summary["customer_id"], f"alert {summary['ref']}")
        self.hub.publish("case", await self.cases.get(case_id))

    async def run(self) -> None:
        r, layout = self.store.r, self.store.k
        cursors_key = layout.cursors()
        alerts_key = layout.alerts()
        streams: dict[str, str] = {}
        rescan_at = 0.0
        down = False
        while True:
            try:
                if time.monotonic() >= rescan_at:  # new RMs' prompt streams appear as prompts arrive
                    keys = [k.decode() async for k in r.scan_iter(match=layout.rm_prompts_pattern(), count=1000)]
                    saved = {k.decode(): v.decode() for k, v in (await r.hgetall(cursors_key)).items()}
                    for key in [alerts_key, *keys]:
                        streams.setdefault(key, saved.get(key, "0-0"))
                    rescan_at = time.monotonic() + 2.0
                reply = await self._read(streams)
                down = False
            except (OSError, ConnectionError) as exc:
                if not down:
                    log.warning("dashboard indexer: Redis unreachable, retrying: %s", type(exc).__name__)
                down = True
                await asyncio.sleep(1.0)
                continue
            for key, entries in reply or ():
                name = key.decode()
                for entry_id, fields in entries:
                    record = orjson.loads(fields[b"data"])
                    if name == alerts_key:
                        summary = await self.store.index_alert(record)
                        if summary is not None:
                            self.hub.publish("alert", summary)
                            await self._case(summary)
                    else:
                        prompt = await self.store.index_prompt(record)
                        if prompt is not None:
                            self.hub.publish("prompt", prompt)
                    streams[name] = entry_id.decode()
                    self.indexed += 1
                await r.hset(cursors_key, name, streams[name])


# -- masking and authorization --------------------------------------------------------------


def scrub(value: Any, secrets: set[str]) -> Any:
    """``value`` with every string that contains one of ``secrets`` masked (deeply)."""
    if isinstance(value, str):
        return MASK if any(s and s in value for s in secrets) else value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def mask_alert(summary: dict[str, Any]) -> dict[str, Any]:
    """An alert summary for a role that may not see identifiers: the customer id (and every
    string holding it: group and dedup keys) masked, and the reasons' free-text values
    (payees, devices) too."""
    out = scrub(summary, {summary["customer_id"]})
    alert = out.get("alert")
    if isinstance(alert, dict):
        alert["reasons"] = [{**r, "value": MASK if isinstance(r.get("value"), str) else r.get("value")}
                            for r in alert.get("reasons", [])]
    return dict(out)


def mask_events(customer: dict[str, Any], locale: str = EN) -> dict[str, Any]:
    """A customer's detail for a role that may not see personal fields: the payees and payers
    of the timeline's events masked (the customer id is scrubbed with the rest)."""
    def masked(item: dict[str, Any]) -> dict[str, Any]:
        event = item.get("event")
        if not isinstance(event, dict) or "counterparty_id" not in event:
            return item
        event = {**event, "counterparty_id": MASK}
        return {**item, "event": event, "what": describe_event(event, locale)}
    return {**customer, "timeline": [masked(t) for t in customer.get("timeline", [])]}


def localize(item: dict[str, Any] | None, locale: str) -> dict[str, Any] | None:
    """An alert summary (its ``alert``'s reasons) or a prompt (its reasons) with the reasons'
    texts in ``locale``, rendered again from their arguments (``schemas.texts``)."""
    if item is None or locale == EN:
        return item
    def texts(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "text": localized_text(r.get("code", ""), r.get("text", ""), r.get("args"), locale)}
                for r in reasons]
    if isinstance(item.get("alert"), dict):
        return {**item, "alert": {**item["alert"], "reasons": texts(item["alert"].get("reasons", []))}}
    if isinstance(item.get("reasons"), list):
        return {**item, "reasons": texts(item["reasons"])}
    return item


def for_rm_timeline(item: dict[str, Any]) -> bool:
    """Whether an RM may see a timeline item: prompts, churn warnings and events, but no fraud
    alert and no fraud / false-positive label (no tipping-off)."""
    if item["kind"] == "event":
        return item["event"].get("label") not in FRAUD_LABELS
    return item["kind"] == "prompt" or item["alert_type"] in RM_ALERTS


def for_rm(summary: dict[str, Any], rm_id: str) -> dict[str, Any] | None:
    """What an RM sees of an alert: only churn warnings and complaint escalations of their own
    customers."""
    if summary.get("rm_id") != rm_id or summary.get("type") not in RM_ALERTS:
        return None
    return summary


# -- request bodies -------------------------------------------------------------------------


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class Unlock(BaseModel):
    username: str = Field(min_length=1, max_length=64)


class Assign(BaseModel):
    assignee: str = Field(min_length=1, max_length=64)


class Snooze(BaseModel):
    hours: float = Field(gt=0, le=24 * 90)


class Close(BaseModel):
    label: Literal["fraud", "legit"]


class CaseNote(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class CaseProposal(BaseModel):
    decision: Literal["fraud", "report", "no_action"]
    reason: str | None = Field(default=None, max_length=2000)


class CaseRejection(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


class BacktestRequest(BaseModel):
    changes: list[Annotated[str, Field(pattern=CHANGE.pattern)]] = Field(min_length=1, max_length=5)


class Answer(BaseModel):
    answer: Literal["accepted", "dismissed", "converted"]


def client_ip(request: Request) -> str:
    """The client's address (uvicorn takes it from ``X-Forwarded-For`` only when the
    connection comes from a trusted proxy, by default 127.0.0.1)."""
    return request.client.host if request.client is not None else "-"


def retry_after(seconds: float | None) -> dict[str, str]:
    """A ``Retry-After`` header (whole seconds, rounded up), or none."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds else {}


def page_json(page: Page, shape: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
    items = [shaped for item in page.items if (shaped := shape(item)) is not None]
    return {"items": items, "total": page.total, "offset": page.offset, "limit": page.limit}


# -- the application ------------------------------------------------------------------------


def create_app(store: Store, users: UserStore, config: DashboardConfig, index: bool = True,
               metrics: DashboardMetrics | None = None) -> FastAPI:
    """The application; with ``index``, it runs the ``Indexer`` while it serves; with
    ``metrics``, it reports to them."""
    signer = Signer(config.secret)
    sessions = SessionStore(store.r, store.k, config.session_ttl_s)
    guard = LoginGuard(store.r, store.k, config.login)
    hub = Hub()
    auditor = Auditor(store.r, store.audit_key, config.audit_keys)
    cases = Cases(store)

    async def backtest_done(run: dict[str, Any]) -> None:
        def figures(side: str) -> str:
            r = run.get("result", {}).get(side, {})
            precision = r.get("precision")
            return f"{r.get('alerts')} alerts, precision {'n/a' if precision is None else f'{precision:.3f}'}"
        detail = (f"{run['input']} with {', '.join(run['changes'])}: " + (
            f"current {figures('current')}; changed {figures('changed')}" if run["status"] == "done"
            else f"failed: {run.get('error', '')[:200]}"))
        await auditor.record("backtest_run", run["by"], "admin", run["id"], None, detail)

    backtests = Backtests(store.r, store.k, config.backtest_input, config.backtest_config, config.backtest_timeout_s,
                          on_done=backtest_done)
    indexer = Indexer(store, hub, cases=cases, auditor=auditor)
    meter = metrics if metrics is not None else DashboardMetrics(CollectorRegistry(), process=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        task = asyncio.create_task(indexer.run()) if index else None
        try:
            yield
        finally:
            await backtests.stop()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(OSError, ConnectionError):  # Redis may be gone already
                await store.r.aclose()

    app = FastAPI(title="CRM stream engine dashboard", version="1",
                  description="Risk view and RM workspace over the engine's Redis outputs. Every `/api` "
                              "endpoint except `/api/login` needs a session cookie; state-changing ones "
                              "also the `X-CSRF-Token` header.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.hub, app.state.indexer, app.state.store = hub, indexer, store

    @app.exception_handler(CannotDecrypt)
    async def cannot_decrypt(request: Request, exc: CannotDecrypt) -> JSONResponse:
        # Names the field and the key id (never plaintext): the operator's clue to a key
        # file that lacks a key, or holds another key under its id.
        log.error("cannot decrypt a stored personal field: %s", exc)
        return JSONResponse({"detail": f"cannot decrypt: {exc}"}, status_code=500,
                            headers={"Cache-Control": "no-store"})

    if metrics is not None:
        app.add_middleware(MeasureRequests, metrics=metrics)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if config.secure_cookies:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    async def signed_in(request: Request) -> Session | None:
        """The request's session if its cookie is valid and its server-side session is open
        and still matches the user's entry in the users file."""
        token = request.cookies.get(COOKIE)
        found = signer.read(token, time.time()) if token else None
        if found is None:
            return None
        users.refresh()
        return found if await sessions.valid(found, users.get(found.username)) else None

    async def session(request: Request) -> Session:
        found = await signed_in(request)
        if found is None:
            raise HTTPException(401, "not signed in")
        return found

    def csrf(request: Request, who: Annotated[Session, Depends(session)]) -> Session:
        if request.headers.get("x-csrf-token") != signer.csrf(who):
            raise HTTPException(403, "missing or wrong CSRF token")
        return who

    def role(*allowed: str, write: bool = False) -> Any:
        dependency = csrf if write else session

        def check(who: Annotated[Session, Depends(dependency)]) -> Session:
            if who.role not in allowed:
                raise HTTPException(403, "not allowed for this role")
            return who
        return Depends(check)

    Reader = Annotated[Session, role("risk_analyst", "admin")]
    Analyst = Annotated[Session, role("risk_analyst", write=True)]
    AnalystRead = Annotated[Session, role("risk_analyst")]
    RMRead = Annotated[Session, role("rm")]
    RMWrite = Annotated[Session, role("rm", write=True)]
    AnyUser = Annotated[Session, Depends(session)]
    Offset = Annotated[int, Query(ge=0, le=10_000_000)]
    Limit = Annotated[int, Query(ge=1)]

    def revealed(who: Session) -> Callable[[Any], Any]:
        """What a role sees of sealed fields: opened for analysts and RMs, masked for admins."""
        if config.pii is None:
            return lambda value: value
        if who.role == "admin":
            return lambda value: masked(value, MASK)
        return config.pii.open_record

    def shown_alert(who: Session) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        reveal = revealed(who)
        if who.role == "admin":
            return lambda s: localize(mask_alert(reveal(s)), config.locale)
        if who.role == "rm":
            return lambda s: localize(for_rm(reveal(s), who.rm_id), config.locale)
        return lambda s: localize(reveal(s), config.locale)

    def shown_prompt(prompt: dict[str, Any]) -> dict[str, Any]:  # only RMs see prompts
        prompt = prompt if config.pii is None else config.pii.open_record(prompt)
        return localize(prompt, config.locale) or prompt

    async def alert_or_404(ref: str) -> dict[str, Any]:
        try:
            return await store.alert_summary(ref)
        except NotFound:
            raise HTTPException(404, "no such alert") from None

    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/api/login", summary="Sign in; sets the session cookie",
              description="401: wrong username or password. 429 (with `Retry-After`): too many failed sign-ins "
                          "for this username or from this address, try later. 423: the username is locked after "
                          "too many failed sign-ins; an administrator can unlock it.")
    async def login(body: Login, request: Request, response: Response) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "JSON only")
        ip = client_ip(request)
        attempt = await guard.attempt(body.username, ip)
        if attempt.outcome == "locked":
            meter.login_failed("locked")
            raise HTTPException(423, "this account is locked after too many failed sign-ins; an administrator "
                                     "can unlock it", headers=retry_after(attempt.retry_after_s))
        if attempt.outcome == "throttled":
            meter.login_failed("throttled")
            wait = retry_after(attempt.retry_after_s)
            raise HTTPException(429, f"too many failed sign-ins: try again in {wait['Retry-After']} s", headers=wait)
        users.refresh(now=True)
        user = await asyncio.to_thread(users.authenticate, body.username, body.password)
        if user is None:
            meter.login_failed("wrong_credentials")
            await failed_login(body.username, ip, attempt)
            raise HTTPException(401, "wrong username or password",
                                headers=retry_after(await guard.retry_after_s(body.username, ip)))
        failures, throttled = await guard.succeeded(user.username, ip)
        sid = await sessions.create(user, ip)
        token = signer.issue(user, config.session_ttl_s, time.time(), sid)
        response.set_cookie(COOKIE, token, max_age=int(config.session_ttl_s), httponly=True, samesite="strict",
                            secure=config.secure_cookies, path="/")
        await auditor.record("login", user.username, user.role, detail=(
            f"after {failures} failed sign-ins and {throttled} throttled attempts" if failures or throttled else None))
        found = signer.read(token, time.time())
        assert found is not None
        return {"username": user.username, "role": user.role, "rm_id": user.rm_id, "csrf": signer.csrf(found)}

    async def failed_login(username: str, ip: str, attempt: Attempt) -> None:
        """Count a failure; audit only the first of a burst and the one that locks, so that
        no one can grow the audit log by failing to sign in."""
        failure = await guard.failed(username, ip, attempt)
        p = config.login
        if failure.locked:
            await auditor.record("login_locked", username[:64], "-", username[:64], detail=(
                f"{failure.failures} failed sign-ins since {format_ts(failure.since_ms / 1000)}, the last from "
                f"{ip}; locked for {p.lockout_s:g} s unless an administrator unlocks it"))
        elif failure.first:
            await auditor.record("login_failed", username[:64], "-", username[:64], detail=(
                f"from {ip}; the failures that follow within {p.window_s:g} s are counted and summarised by "
                f"the lockout or the next sign-in"))

    @app.post("/api/logout", summary="Sign out")
    async def logout(who: Annotated[Session, Depends(csrf)], response: Response) -> dict[str, str]:
        await sessions.revoke(who)
        response.delete_cookie(COOKIE, path="/")
        await auditor.record("logout", who.username, who.role)
        return {"ok": "signed out"}

    @app.get("/api/admin/locks", summary="Usernames locked after failed sign-ins (admin)")
    async def locks(who: Annotated[Session, role("admin")]) -> dict[str, Any]:
        return {"items": await guard.locks()}

    @app.post("/api/admin/unlock", summary="Lift the lock of a username (admin)")
    async def unlock(body: Unlock, who: Annotated[Session, role("admin", write=True)]) -> dict[str, Any]:
        held = await guard.unlock(body.username)
        if held is not None:
            meter.action("unlock")
            await auditor.record("login_unlocked", who.username, who.role, body.username, detail=(
                f"locked after {held.get('failures', '?')} failed sign-ins; {held.get('refused', '0')} attempts "
                f"refused while locked"))
        return {"username": body.username, "was_locked": held is not None}

    @app.post("/api/admin/backtest", status_code=202,
              summary="Start a rule back-test on the configured stream (admin): rules.KEY=VALUE changes",
              description="409 while another runs; 404 if no stream is configured ([dashboard] backtest_input).")
    async def backtest_start(body: BacktestRequest, who: Annotated[Session, role("admin", write=True)]
                             ) -> dict[str, Any]:
        if not backtests.enabled:
            raise HTTPException(404, "no back-test stream is configured ([dashboard] backtest_input)")
        try:
            run = await backtests.start(body.changes, who.username)
        except Busy as exc:
            raise HTTPException(409, str(exc)) from None
        meter.action("backtest")
        await auditor.record("backtest_started", who.username, who.role, run["id"], None,
                             f"{run['input']} with {', '.join(body.changes)}")
        return run

    @app.get("/api/admin/backtest", summary="The latest rule back-tests and their results (admin)")
    async def backtest_list(who: Annotated[Session, role("admin")]) -> dict[str, Any]:
        return {"enabled": backtests.enabled, "items": await backtests.recent()}

    @app.get("/api/display", summary="The pages' language and time zone ([display]); no sign-in needed")
    async def display() -> dict[str, str]:
        return {"locale": config.locale, "timezone": config.timezone}

    @app.get("/api/me", summary="Who is signed in, and the session's CSRF token")
    async def me(who: AnyUser) -> dict[str, Any]:
        return {"username": who.username, "role": who.role, "rm_id": who.rm_id, "csrf": signer.csrf(who),
                "masked": who.role == "admin"}

    @app.get("/api/alerts", summary="The alert queue, newest first, filtered and paginated")
    async def alerts(who: Reader, offset: Offset = 0, limit: Limit = 50,
                     status: Annotated[str, Query(pattern="^(active|all|" + "|".join(STATUSES) + ")$")] = "active",
                     type: Annotated[str | None, Query(pattern="^(" + "|".join(ALERT_TYPES) + ")$")] = None,
                     severity: Annotated[str | None, Query(pattern="^(" + "|".join(SEVERITIES) + ")$")] = None,
                     ) -> dict[str, Any]:
        page = await store.alerts(status, type, severity, None, offset, min(limit, config.page_size_max))
        return page_json(page, shown_alert(who))

    @app.get("/api/alerts/{ref}", summary="An alert group: latest revision, reasons, scores, the customer's timeline")
    async def alert(ref: str, who: Reader) -> dict[str, Any]:
        summary = await alert_or_404(ref)
        customer = await store.customer(summary["customer_id"], revealed(who))
        summary = revealed(who)(summary)
        shown = localize(summary, config.locale) or summary
        if who.role == "admin":
            return mask_alert({**shown, "customer": mask_events(customer, config.locale)})
        return {**shown, "customer": customer}

    async def act(ref: str, who: Session, action: str, status: str, detail: str | None = None,
                  event: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  assignee: str | None = None) -> dict[str, Any]:
        """Apply an action once: a repeat of what the group already is returns its state with
        ``changed: false`` and sends nothing; an action a closed group cannot take is a 409."""
        for _ in range(10):  # the group changed between reading and applying: read it again
            summary = await alert_or_404(ref)
            verdict = alert_verdict(summary["status"], summary["assignee"], status, assignee)
            if verdict == "repeat":
                return {**summary, "changed": False, "sent_event_id": None}
            if verdict == "conflict":
                raise HTTPException(409, f"the alert is {summary['status']} and cannot become {status}")
            sent = event(summary) if event is not None else None
            if await store.change_status(summary, status, assignee, sent):
                break
        else:
            raise HTTPException(409, "the alert kept changing; try again")
        event_id = sent["event_id"] if sent is not None else None
        meter.action("close_" + status.removeprefix("closed_") if action == "close" else action)
        await auditor.record(action, who.username, who.role, ref, summary["customer_id"], detail, event_id)
        updated = await alert_or_404(ref)
        hub.publish("alert", updated)
        return {**updated, "changed": True, "sent_event_id": event_id}

    @app.post("/api/alerts/{ref}/acknowledge", summary="Acknowledge an alert")
    async def acknowledge(ref: str, who: Analyst) -> dict[str, Any]:
        return await act(ref, who, "acknowledge", "acknowledged")

    @app.post("/api/alerts/{ref}/assign", summary="Assign an alert to an analyst")
    async def assign(ref: str, body: Assign, who: Analyst) -> dict[str, Any]:
        target = users.get(body.assignee)
        if target is None or target.role != "risk_analyst":
            raise HTTPException(422, "assign to an existing risk analyst")
        return await act(ref, who, "assign", "assigned", body.assignee, assignee=body.assignee)

    @app.post("/api/alerts/{ref}/snooze", summary="Snooze the customer's alerts of this type (a control event)")
    async def snooze(ref: str, body: Snooze, who: Analyst) -> dict[str, Any]:
        def control(s: dict[str, Any]) -> dict[str, Any]:
            return store.snooze_event(s["customer_id"], s["type"], body.hours, s["event_ts"], who.username)
        return await act(ref, who, "snooze", "snoozed", f"{body.hours} h", control)

    @app.post("/api/alerts/{ref}/close", summary="Close as fraud or false positive (feedback)")
    async def close(ref: str, body: Close, who: Analyst) -> dict[str, Any]:
        def label(s: dict[str, Any]) -> dict[str, Any]:
            a = s["alert"]
            return store.feedback_event(s["customer_id"], body.label, s["event_ts"], ref_event_id=a["event_id"],
                                        ref_alert_id=a["alert_id"])
        return await act(ref, who, "close", f"closed_{body.label}", body.label, label)

    # -- cases (dashboard.cases) ------------------------------------------------------------

    def shown_case(who: Session, case: dict[str, Any]) -> dict[str, Any]:
        """A case as the role may see it: for admins the customer id scrubbed everywhere and
        the notes' and reasons' free text masked (it may name people and accounts)."""
        if who.role != "admin":
            return case
        masked = {**case}
        if "log" in masked:
            masked["log"] = [{**e, "text": MASK} if "text" in e else e for e in masked["log"]]
        if "alert_groups" in masked:
            masked["alert_groups"] = [mask_alert(a) for a in masked["alert_groups"]]
        return dict(scrub(masked, {case["customer_id"]}))

    async def case_or_404(case_id: str) -> dict[str, Any]:
        try:
            return await cases.detail(case_id)
        except NotFound:
            raise HTTPException(404, "no such case") from None

    async def case_action(case_id: str, who: Session, action: str,
                          change: Callable[[], Awaitable[dict[str, Any]]],
                          detail: str | None = None) -> dict[str, Any]:
        """Apply a case change; audit and publish it if it changed the case."""
        await case_or_404(case_id)
        try:
            done = await change()
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        except SameAnalyst as exc:
            raise HTTPException(403, str(exc)) from None
        if done["changed"]:
            meter.action(action)
            await auditor.record(action, who.username, who.role, case_id, done["customer_id"], detail)
            hub.publish("case", {k: v for k, v in done.items() if k != "changed"})
        return done

    @app.get("/api/cases", summary="Cases: a customer's open fraud alerts grouped, open (and proposed) or closed")
    async def case_list(who: Reader, offset: Offset = 0, limit: Limit = 50,
                        status: Annotated[str, Query(pattern="^(open|closed)$")] = "open") -> dict[str, Any]:
        items, total = await cases.page(status, offset, min(limit, config.page_size_max))
        return {"items": [shown_case(who, c) for c in items], "total": total, "offset": offset, "limit": limit}

    @app.get("/api/cases/{case_id}", summary="A case: its alert groups, history, the customer's timeline")
    async def case_detail(case_id: str, who: Reader) -> dict[str, Any]:
        case = await case_or_404(case_id)
        reveal = revealed(who)
        case["alert_groups"] = [localize(reveal(a), config.locale) or a for a in case["alert_groups"]]
        customer = await store.customer(case["customer_id"], reveal)
        if who.role == "admin":
            return shown_case(who, {**case, "customer": mask_events(customer, config.locale)})
        return {**case, "customer": customer}

    @app.post("/api/cases/{case_id}/assign", summary="Give a case an owner (a risk analyst)")
    async def case_assign(case_id: str, body: Assign, who: Analyst) -> dict[str, Any]:
        target = users.get(body.assignee)
        if target is None or target.role != "risk_analyst":
            raise HTTPException(422, "assign to an existing risk analyst")
        return await case_action(case_id, who, "case_assign",
                                 lambda: cases.assign(case_id, body.assignee, who.username),
                                 body.assignee)

    @app.post("/api/cases/{case_id}/notes", summary="Add a note to a case")
    async def case_note(case_id: str, body: CaseNote, who: Analyst) -> dict[str, Any]:
        return await case_action(case_id, who, "case_note", lambda: cases.note(case_id, body.text, who.username),
                                 f"{len(body.text)} characters")

    @app.post("/api/cases/{case_id}/propose", summary="Propose a decision (fraud, report, no_action): the maker")
    async def case_propose(case_id: str, body: CaseProposal, who: Analyst) -> dict[str, Any]:
        return await case_action(case_id, who, "case_propose",
                                 lambda: cases.propose(case_id, body.decision, who.username, body.reason),
                                 body.decision)

    @app.post("/api/cases/{case_id}/reject", summary="Reject the proposal back to open (another analyst)")
    async def case_reject(case_id: str, body: CaseRejection, who: Analyst) -> dict[str, Any]:
        return await case_action(case_id, who, "case_reject",
                                 lambda: cases.reject(case_id, who.username, body.reason))

    @app.post("/api/cases/{case_id}/approve",
              summary="Approve the proposal (another analyst): closes every alert of the case, feedback to the engine")
    async def case_approve(case_id: str, who: Analyst) -> dict[str, Any]:
        case = await case_or_404(case_id)
        try:
            done = await cases.approve(case_id, who.username)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        except SameAnalyst as exc:
            raise HTTPException(403, str(exc)) from None
        closed = done.pop("closed", [])
        if done["changed"]:
            meter.action("case_approve")
            for summary, event_id in closed:  # each alert closed, as closing it alone is audited
                label = "fraud" if done["decision"] in ("fraud", "report") else "legit"
                meter.action(f"close_{label}")
                await auditor.record("close", who.username, who.role, summary["ref"], summary["customer_id"],
                                     f"{label} (case {case_id})", event_id)
                hub.publish("alert", await alert_or_404(summary["ref"]))
            await auditor.record("case_approve", who.username, who.role, case_id, case["customer_id"],
                                 f"{done['decision']} proposed by {done['proposed_by']}; "
                                 f"{len(closed)} alerts closed")
            hub.publish("case", {k: v for k, v in done.items() if k != "changed"})
        return done

    async def report(case_id: str, who: Session, form: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
        case = await case_or_404(case_id)
        if "report" not in (case["proposal"], case["decision"]):
            raise HTTPException(409, "a report is exported for a case proposed or approved as report")
        reveal = revealed(who)  # analysts only: the personal fields opened, as on their pages
        case = {**case, "alert_groups": [reveal(a) for a in case["alert_groups"]]}
        rows = report_rows(case, await store.customer(case["customer_id"], reveal), config.locale)
        meter.action("report_export")
        await auditor.record("report_exported", who.username, who.role, case_id, case["customer_id"], form)
        return case, rows

    @app.get("/api/cases/{case_id}/report.csv", summary="The suspicious-transaction report as CSV (analysts)")
    async def report_as_csv(case_id: str, who: AnalystRead) -> Response:
        case, rows = await report(case_id, who, "csv")
        return Response(report_csv(rows), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="str-{case["id"]}.csv"'})

    @app.get("/api/cases/{case_id}/report.html", summary="The suspicious-transaction report, printable (analysts)")
    async def report_as_html(case_id: str, who: AnalystRead) -> HTMLResponse:
        case, rows = await report(case_id, who, "html")
        return HTMLResponse(report_html(case, rows, who.username, format_ts(time.time()), config.locale))

    @app.get("/api/customers/{cref}", summary="A customer: scores, alerts, prompts, timeline")
    async def customer(cref: str, who: AnyUser) -> dict[str, Any]:
        try:
            customer_id = await store.customer_of(cref)
        except NotFound:
            if who.role == "rm":
                raise HTTPException(403, "not your customer") from None
            raise HTTPException(404, "no such customer") from None
        if who.role == "rm" and await store.owner(customer_id) != who.rm_id:
            raise HTTPException(403, "not your customer")
        data = await store.customer(customer_id, revealed(who))
        if who.role == "rm":  # no fraud data for RMs (no tipping-off)
            data["alerts"] = [a for a in data["alerts"] if a["type"] in RM_ALERTS]
            data["timeline"] = [t for t in data["timeline"] if for_rm_timeline(t)]
            for key in ("fraud_score", "fraud_risk", "open_groups"):
                data.pop(key, None)
        if who.role == "admin":
            data["alerts"] = [mask_alert(a) for a in data["alerts"]]
            data = scrub(mask_events(data, config.locale), {customer_id})
        return data

    @app.get("/api/rm/prompts", summary="The RM's prompts: waiting for an answer (new) or accepted")
    async def prompts(who: RMRead, offset: Offset = 0, limit: Limit = 50,
                      which: Annotated[str, Query(pattern="^(new|accepted)$")] = "new") -> dict[str, Any]:
        page = await store.prompts(who.rm_id, which, offset, min(limit, config.page_size_max))
        return page_json(page, shown_prompt)

    @app.post("/api/rm/prompts/{prompt_id}/answer", summary="Accept, dismiss or mark converted (feedback)")
    async def answer(prompt_id: str, body: Answer, who: RMWrite) -> dict[str, Any]:
        for _ in range(10):  # the prompt changed between reading and answering: read it again
            try:
                prompt, stored = await store.prompt_stored(prompt_id)
            except NotFound:
                raise HTTPException(403, "not your prompt") from None
            if prompt.get("rm_id") != who.rm_id:
                raise HTTPException(403, "not your prompt")
            verdict = prompt_verdict(prompt["status"], body.answer)
            if verdict == "repeat":
                return {**prompt, "changed": False, "sent_event_id": None}
            if verdict == "conflict":
                raise HTTPException(409, f"a prompt that is {prompt['status']} cannot be {body.answer}")
            sent = store.feedback_event(prompt["customer_id"], ANSWERS[body.answer], prompt["event_ts"],
                                        ref_prompt_id=prompt_id)
            updated = await store.answer(prompt_id, body.answer, sent, stored)
            if updated is not None:
                break
        else:
            raise HTTPException(409, "the prompt kept changing; try again")
        meter.action(f"prompt_{body.answer}")
        await auditor.record("answer_prompt", who.username, who.role, prompt_id, prompt["customer_id"], body.answer,
                             sent["event_id"])
        hub.publish("prompt", {**updated, "cref": store.ref("c", prompt["customer_id"])})
        return {**updated, "changed": True, "sent_event_id": sent["event_id"]}

    @app.get("/api/rm/churn", summary="Churn warnings (or, with type, complaint escalations) about the RM's customers")
    async def churn(who: RMRead, offset: Offset = 0, limit: Limit = 50,
                    type: Annotated[str, Query(pattern="^(" + "|".join(sorted(RM_ALERTS)) + ")$")] = "churn_risk",
                    ) -> dict[str, Any]:
        page = await store.alerts("all", type, None, who.rm_id, offset, min(limit, config.page_size_max))
        return page_json(page, shown_alert(who))

    @app.get("/api/stats", summary="Plots: alert volume per hour, score distribution, the RM's conversion")
    async def stats(who: AnyUser) -> dict[str, Any]:
        if who.role == "rm":
            return {"rm": (await store.stats(who.rm_id))["rm"]}
        return await store.stats(None)

    @app.get("/api/models", summary="The fraud models: prequential AUC and AP, the champion, its last change")
    async def models(who: Reader) -> dict[str, Any]:
        return await store.models()

    @app.get("/api/audit", summary="The latest audit entries (admin), identifiers masked")
    async def audit(who: Annotated[Session, role("admin")],
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        entries = await auditor.recent(limit)
        customers = {str(e["record"].get("customer_id")) for e in entries if e["record"].get("customer_id")}
        return {"items": scrub(masked(entries, MASK), customers)}  # sealed fields: masked, not ciphertext

    @app.get("/api/events", summary="Server-sent events: alerts and prompts as they arrive, as the role may see them")
    async def events(request: Request, who: AnyUser) -> StreamingResponse:
        shape = shown_alert(who)

        def allow(kind: str, item: dict[str, Any]) -> dict[str, Any] | None:
            if kind == "alert":
                return shape(item)
            if kind == "prompt":
                return shown_prompt(item) if who.role == "rm" and item.get("rm_id") == who.rm_id else None
            if kind == "case" and who.role != "rm":
                return shown_case(who, item)
            return None

        sid, queue = hub.subscribe(allow)

        async def stream() -> AsyncIterator[bytes]:
            meter.sse_clients.inc()
            try:
                yield b"retry: 1000\n\n"
                checked = quiet = time.monotonic()
                while not hub.closed and not await request.is_disconnected():
                    if time.monotonic() - checked >= config.session_check_s:
                        if await signed_in(request) is None:
                            return  # signed out, revoked or expired: the stream ends
                        checked = time.monotonic()
                    try:
                        message = await asyncio.wait_for(queue.get(), timeout=config.session_check_s)
                        if not message:
                            return  # the server is stopping (Hub.close)
                        yield message
                        quiet = time.monotonic()
                    except TimeoutError:
                        if time.monotonic() - quiet >= KEEP_ALIVE_S:
                            yield b": keep-alive\n\n"
                            quiet = time.monotonic()
            finally:
                meter.sse_clients.dec()
                hub.unsubscribe(sid)

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app
