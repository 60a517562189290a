"""Webhook sink: one HTTP POST per record, as generic JSON or as a group-robot markdown
message (WeCom / WeChat Work, DingTalk, Feishu).

- ``json``: the record's canonical JSON (``to_bytes()``) as the body.
- ``wecom``, ``dingtalk``, ``feishu``: a short, readable summary of an alert (severity,
  type, customer, RM, score, reasons; ``alert_text``), in the display locale (English or
  Chinese, ``schemas.texts``), shaped into that robot's message and
  signed with ``robot_secret`` (DingTalk, Feishu) by ``schemas.robots``; a reply whose
  error code is not 0 is a refusal (the robot's rate limit is retried).

Every request carries ``Idempotency-Key`` (the record id, e.g. ``alert_id``) and has a
timeout; with a signing secret, also ``X-CRM-Timestamp`` and ``X-CRM-Signature``, an
HMAC-SHA256 of the timestamp and the body (``schemas.webhook``, which receivers verify
with). 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried with
exponential backoff and full jitter (``sinks.delivery``), or after the ``Retry-After`` the
receiver sent (seconds or an HTTP date; within the retry budget); any other 4xx is a
permanent refusal and goes straight to the sink's dead letter, as does what is still
undelivered when the retry budget is spent.

Delivery: at least once to the endpoint; exactly once for a receiver that de-duplicates by
``Idempotency-Key`` (a retried request whose first attempt timed out may have arrived). The
stdlib HTTP client is enough: alerts are few, and a sink blocks only its own thread.
"""

from __future__ import annotations

import email.utils
import http.client
import time
import urllib.error
import urllib.request
from typing import Literal

import orjson

from schemas.outputs import Alert
from schemas.robots import coloured, is_robot, reply_error, robot_payload, robot_request
from schemas.texts import EN, format_time, label, localized_text
from schemas.webhook import sign
from sinks.base import Record
from sinks.delivery import BufferedSink, DeadLetterOut, RetryLater, RetryPolicy, Undeliverable, record_id

WebhookFormat = Literal["json", "wecom", "dingtalk", "feishu"]
_RETRIED_STATUS = frozenset({408, 425, 429})


def _field(name: str, locale: str) -> str:
    """``name:`` in English, ``名称：`` in Chinese (full-width colon, no space)."""
    text = label("field", name, locale)
    return f"{text}: " if locale == EN else f"{text}："


def alert_text(record: Record, fmt: str = "wecom", locale: str = EN, zone: str = "") -> tuple[str, str]:
    """The title and markdown text of a record's robot message in ``locale`` (``[display]``):
    reasons rendered from their arguments where they have them, times in ``zone`` (default:
    the locale's).

    >>> from schemas.outputs import Reason
    >>> a = Alert("al-1", "account_takeover", "high", 0.91, "c1", "rm7", "e1",
    ...           "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:33.900Z",
    ...           (Reason("takeover", "password reset then a new payee", None, 0.6),), "m1")
    >>> title, text = alert_text(a)
    >>> print(title); print(text)
    HIGH account_takeover, customer c1
    **<font color="warning">HIGH</font> account_takeover**
    > customer: c1 · RM: rm7 · score: 0.91
    > event time: 2026-01-05T11:56:33.860Z · alert: al-1
    - password reset then a new payee
    >>> a = Alert("al-1", "account_takeover", "high", 0.91, "c1", "rm7", "e1",
    ...           "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:33.900Z",
    ...           (Reason.of("takeover_sequence", 5000.0, 0.6, amount=5000.0, currency="CNY"),), "m1")
    >>> title, text = alert_text(a, "wecom", "zh-CN")
    >>> print(title); print(text)
    高 账户盗用，客户 c1
    **<font color="warning">高</font> 账户盗用**
    > 客户：c1 · 客户经理：rm7 · 评分：0.91
    > 事件时间：2026-01-05 19:56:33 (北京时间) · 告警编号：al-1
    - 安全信息变更或登录失败后 24 小时内，向新收款方或从新设备转出 ¥5,000.00
    """
    if not isinstance(record, Alert):
        return type(record).__name__, record.to_bytes().decode("utf-8")
    severity: str
    kind: str
    if locale == EN:  # the engine's own words: type and severity as the data names them
        severity, kind = record.severity.upper(), record.type
    else:
        severity, kind = label("severity", record.severity, locale), label("alert_type", record.type, locale)
    lines = [f"**{coloured(fmt, severity, record.severity)} {kind}**",
             "> " + " · ".join((f"{_field('customer', locale)}{record.customer_id}",
                                f"{_field('rm', locale)}{record.rm_id or '-'}",
                                f"{_field('score', locale)}{record.score:.2f}")),
             "> " + " · ".join((f"{_field('event_time', locale)}{format_time(record.event_ts, locale, zone)}",
                                f"{_field('alert', locale)}{record.alert_id}"))]
    status = getattr(record, "status", None)
    if status and status != "firing":
        lines[0] += f" ({label('status', status, locale)})"
    lines += [f"- {localized_text(r.code, r.text, r.args, locale)}" for r in record.reasons]
    customer = (f"customer {record.customer_id}" if locale == EN
                else f"{label('field', 'customer', locale)} {record.customer_id}")
    return f"{severity} {kind}{', ' if locale == EN else '，'}{customer}", "\n".join(lines)


def wecom_markdown(record: Record) -> bytes:
    """The WeCom group-robot markdown message for a record (``alert_text`` shaped by
    ``schemas.robots``).

    >>> from schemas.outputs import Reason
    >>> a = Alert("al-1", "account_takeover", "high", 0.91, "c1", "rm7", "e1",
    ...           "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:33.900Z", (), "m1")
    >>> orjson.loads(wecom_markdown(a))["msgtype"]
    'markdown'
    """
    title, text = alert_text(record, "wecom")
    return orjson.dumps(robot_payload("wecom", title, text))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (delay-seconds or an HTTP date);
    None if absent or unreadable.

    >>> retry_after_s("120"), retry_after_s("Thu, 01 Jan 2026 00:01:00 GMT", now=1767225600.0)
    (120.0, 60.0)
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class WebhookSink(BufferedSink):
    """POST every record to ``url`` (see the module doc)."""

    def __init__(self, url: str, dead_letters: DeadLetterOut, fmt: WebhookFormat = "json",
                 timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, signing_secret: bytes = b"",
                 robot_secret: str = "", locale: str = EN, zone: str = "") -> None:
        super().__init__("webhook", dead_letters, capacity=capacity, batch_size=1, policy=policy)
        self._url = url
        self._format = fmt
        self._timeout_s = timeout_s
        self._secret = signing_secret
        self._robot_secret = robot_secret
        self._locale, self._zone = locale, zone  # of the robots' messages ([display])

    def connect(self) -> None:
        if not self._url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://..., got {self._url[:40]!r}")

    def request(self, record: Record) -> tuple[str, bytes]:
        """The URL and body of ``record``'s POST (a robot's signed at this moment)."""
        if not is_robot(self._format):
            return self._url, record.to_bytes()
        title, text = alert_text(record, self._format, self._locale, self._zone)
        level = record.severity if isinstance(record, Alert) else ""
        return robot_request(self._format, self._url, title, text, self._robot_secret, level=level)

    def deliver(self, records: list[Record]) -> None:
        for record in records:
            self._post(record)

    def _post(self, record: Record) -> None:
        url, body = self.request(record)
        headers = {"Content-Type": "application/json", "Idempotency-Key": record_id(record)}
        if self._secret:  # signed at each attempt: the timestamp is when it was sent
            headers.update(sign(self._secret, body))
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                reply = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in _RETRIED_STATUS or exc.code >= 500:
                after = retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
                if after is not None:
                    raise RetryLater(f"HTTP {exc.code}, retry after {after:.0f} s", after) from None
                raise ConnectionError(f"HTTP {exc.code}") from None
            raise Undeliverable(f"HTTP {exc.code}") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        if is_robot(self._format):
            refused = reply_error(self._format, reply)
            if refused is not None and refused.retryable:  # the robot's rate limit: later
                raise ConnectionError(refused.message)
            if refused is not None:
                raise Undeliverable(refused.message)
