"""The alert bridge: Alertmanager's webhook notifications to group-chat robots (WeCom,
DingTalk, Feishu), as ``run.py alert-bridge`` serves it.

Alertmanager posts one JSON notification (``"version": "4"``) per alert group to a
``webhook_configs`` URL; the bridge renders it as one markdown message (firing or resolved,
alert name, severity, each alert's summary, description and the labels that tell the alerts
apart, the runbook link) and posts it to every configured robot, shaped and signed by
``schemas.robots``. A robot that answers 5xx, times out, cannot be reached or reports its rate
limit is tried again with doubling backoff, ``attempts`` times; if a robot still has not taken
the message, Alertmanager is answered 502 and retries the notification itself (its
``alertmanager_notifications_failed_total`` counts it). Robots that took a message are not sent
it again on Alertmanager's retry (a short memory of what was delivered), so a failing second
robot does not repeat messages in the first one's chat. A request that is not a version-4
notification is answered 400 (Alertmanager does not retry it).

Delivery: at least once per robot while Alertmanager retries; a message repeated after the
bridge restarts between a delivery and Alertmanager's retry is possible. Standard library HTTP
only: notifications are few (grouped, rate-limited by Alertmanager).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.robots import coloured, reply_error, robot_request

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
#: Labels every message shows in its heading (not repeated per alert).
_HEADING_LABELS = ("alertname", "severity", "job")
_DELIVERED_MEMORY = 1024  # (robot, message) pairs remembered ...
_DELIVERED_TTL_S = 3600.0  # ... for this long


class NotificationError(ValueError):
    """The request is not an Alertmanager version-4 webhook notification."""


@dataclass(frozen=True)
class AmAlert:
    """One alert of a notification."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str


@dataclass(frozen=True)
class Notification:
    """Alertmanager's webhook notification (version 4), the fields the message uses."""

    status: str  # "firing" or "resolved"
    receiver: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    external_url: str
    alerts: tuple[AmAlert, ...]
    truncated_alerts: int = 0

    @classmethod
    def parse(cls, body: bytes) -> Notification:
        """The notification in ``body``; ``NotificationError`` naming what is wrong."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise NotificationError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise NotificationError("not a JSON object")
        if data.get("version") != "4":
            raise NotificationError(f"version {data.get('version')!r}, expected \"4\"")
        alerts = data.get("alerts")
        if not isinstance(alerts, list) or not alerts:
            raise NotificationError("no alerts")
        try:
            return cls(status=str(data.get("status", "firing")), receiver=str(data.get("receiver", "")),
                       group_labels=_strings(data.get("groupLabels")),
                       common_labels=_strings(data.get("commonLabels")),
                       common_annotations=_strings(data.get("commonAnnotations")),
                       external_url=str(data.get("externalURL", "")),
                       alerts=tuple(AmAlert(str(a.get("status", "firing")), _strings(a.get("labels")),
                                            _strings(a.get("annotations")), str(a.get("startsAt", "")),
                                            str(a.get("endsAt", ""))) for a in alerts),
                       truncated_alerts=int(data.get("truncatedAlerts") or 0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise NotificationError(f"malformed alerts: {exc}") from None


def _strings(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NotificationError("labels and annotations must be objects")
    return {str(k): str(v) for k, v in value.items()}


def render(notification: Notification, fmt: str = "wecom", max_alerts: int = 20) -> tuple[str, str, str]:
    """The title, markdown text and colour level of a notification's message (English).

    >>> n = Notification("firing", "chat", {"alertname": "CrmEngineDown"},
    ...     {"alertname": "CrmEngineDown", "severity": "critical", "job": "crm-engine"},
    ...     {"runbook_url": "https://runbooks/CrmEngineDown.md"}, "http://am:9093",
    ...     (AmAlert("firing", {"alertname": "CrmEngineDown", "severity": "critical", "job": "crm-engine",
    ...                         "instance": "engine-0:9100"},
    ...              {"summary": "Engine process engine-0:9100 is down", "description": "No scrape."},
    ...              "2026-01-05T11:56:33.86Z", "0001-01-01T00:00:00Z"),))
    >>> title, text, level = render(n, "dingtalk")
    >>> print(title); print(text)
    [FIRING] CrmEngineDown (critical)
    **FIRING CrmEngineDown** · severity critical · job crm-engine
    <BLANKLINE>
    - **Engine process engine-0:9100 is down**
      No scrape.
      instance=engine-0:9100 · since 2026-01-05T11:56:33Z
    <BLANKLINE>
    Runbook: [CrmEngineDown](https://runbooks/CrmEngineDown.md) · [Alertmanager](http://am:9093)
    """
    common = notification.common_labels
    name = common.get("alertname") or notification.group_labels.get("alertname") or "alerts"
    severity = common.get("severity", "")
    resolved = notification.status == "resolved"
    level = "resolved" if resolved else severity
    status = notification.status.upper()
    firing = sum(1 for a in notification.alerts if a.status == "firing")
    count = len(notification.alerts) + notification.truncated_alerts
    counted = f":{firing if not resolved else count}" if count > 1 else ""
    title = f"[{status}{counted}] {name}" + (f" ({severity})" if severity else "")
    heading = [f"**{coloured(fmt, status + counted, level)} {name}**"]
    heading += [f"{key} {common[key]}" for key in ("severity", "job") if key in common]
    lines = [" · ".join(heading), ""]
    for alert in notification.alerts[:max_alerts]:
        lines += _alert_lines(alert, notification.common_annotations)
    hidden = count - min(len(notification.alerts), max_alerts)
    if hidden > 0:
        lines.append(f"- ... and {hidden} more")
    runbooks = _runbooks(notification)
    links = ["Runbook: " + ", ".join(runbooks)] if runbooks else []
    if notification.external_url:
        links.append(f"[Alertmanager]({notification.external_url})")
    if links:
        lines += ["", " · ".join(links)]
    return title, "\n".join(lines), level


def _alert_lines(alert: AmAlert, common_annotations: Mapping[str, str]) -> list[str]:
    summary = alert.annotations.get("summary") or alert.labels.get("alertname", "alert")
    lines = [f"- **{summary}**" + (" (resolved)" if alert.status == "resolved" else "")]
    description = alert.annotations.get("description") or common_annotations.get("description")
    if description:
        lines.append(f"  {description}")
    details = [f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in _HEADING_LABELS]
    when = f"since {_second(alert.starts_at)}" if alert.status == "firing" else f"ended {_second(alert.ends_at)}"
    lines.append("  " + " · ".join([*details, when]))
    return lines


def _second(timestamp: str) -> str:
    """An RFC 3339 time to the second (Alertmanager's carry nanoseconds)."""
    head, dot, _ = timestamp.partition(".")
    return head + "Z" if dot else timestamp


def _runbooks(notification: Notification) -> list[str]:
    urls: dict[str, str] = {}
    for alert in notification.alerts:
        url = alert.annotations.get("runbook_url") or notification.common_annotations.get("runbook_url")
        if url:
            urls.setdefault(url, alert.labels.get("alertname", "runbook"))
    return [f"[{name}]({url})" for url, name in urls.items()]


class DeliveryFailed(RuntimeError):
    """A robot did not take the message within the attempts."""


@dataclass(frozen=True)
class Robot:
    """Where messages go: the robot's webhook URL, its format and signing secret."""

    url: str
    fmt: str
    secret: str = ""


class AlertBridge:
    """Renders notifications and delivers them to every robot (see the module doc)."""

    def __init__(self, robots: list[Robot], timeout_s: float = 5.0, attempts: int = 3, backoff_s: float = 0.5,
                 max_alerts: int = 20, sleep: Callable[[float], None] = time.sleep) -> None:
        if not robots:
            raise ValueError("the alert bridge needs at least one robot URL ([alert_bridge] robot_urls)")
        self._robots = robots
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_alerts = max_alerts
        self._sleep = sleep
        self._delivered: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, body: bytes) -> list[str]:
        """Deliver the notification in ``body`` to every robot; the robots' failures (empty:
        delivered). ``NotificationError`` if it is not a notification."""
        notification = Notification.parse(body)
        failures = []
        for index, robot in enumerate(self._robots):
            title, text, level = render(notification, robot.fmt, self._max_alerts)
            key = hashlib.sha256(f"{robot.url}\n{title}\n{text}".encode()).hexdigest()
            if self._seen(key):
                continue
            try:
                self._deliver(robot, title, text, level)
            except DeliveryFailed as exc:
                log.error("alert bridge: robot %d (%s) did not take %r: %s", index, robot.fmt, title, exc)
                failures.append(f"robot {index}: {exc}")
                continue
            self._remember(key)
            log.info("alert bridge: %r delivered to robot %d (%s)", title, index, robot.fmt)
        return failures

    def _deliver(self, robot: Robot, title: str, text: str, level: str) -> None:
        delay = self._backoff_s
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(delay)
                delay *= 2
            url, body = robot_request(robot.fmt, robot.url, title, text, robot.secret, level=level)
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                    reply = response.read()
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code not in (408, 429):
                    raise DeliveryFailed(problem) from None  # refused: trying again will not help
                continue
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            refused = reply_error(robot.fmt, reply)
            if refused is None:
                return
            problem = refused.message
            if not refused.retryable:
                raise DeliveryFailed(problem)
        raise DeliveryFailed(f"{problem} (after {self._attempts} attempts)")

    def _seen(self, key: str) -> bool:
        with self._lock:
            when = self._delivered.get(key)
            return when is not None and time.monotonic() - when < _DELIVERED_TTL_S

    def _remember(self, key: str) -> None:
        with self._lock:
            self._delivered[key] = time.monotonic()
            self._delivered.move_to_end(key)
            while len(self._delivered) > _DELIVERED_MEMORY:
                self._delivered.popitem(last=False)


class BridgeServer:
    """The bridge's HTTP server: ``POST`` any path takes a notification (200 delivered, 400
    not a notification, 413 too large, 502 not delivered); ``GET /healthz`` answers 200."""

    def __init__(self, bridge: AlertBridge, host: str, port: int) -> None:
        handler = _handler(bridge)
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> BridgeServer:
        """Serve from a background thread (tests, and embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="alert-bridge", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving (from another thread than ``serve_forever``'s) and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _handler(bridge: AlertBridge) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, b"ok\n")
            else:
                self._answer(404, b"not found\n")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413, b"notification too large\n")
                return
            body = self.rfile.read(length)
            try:
                failures = bridge.handle(body)
            except NotificationError as exc:
                log.warning("alert bridge: refused a request: %s", exc)
                self._answer(400, f"not an Alertmanager notification: {exc}\n".encode())
                return
            if failures:
                self._answer(502, ("; ".join(failures) + "\n").encode())
            else:
                self._answer(200, b"delivered\n")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("alert bridge: " + format, *args)

    return Handler


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` as a pair (an IPv4 address or a name).

    >>> parse_listen("0.0.0.0:9095")
    ('0.0.0.0', 9095)
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host, int(port)
