"""Group-chat robots' wire formats: the one place that knows what WeCom (WeChat Work),
DingTalk and Feishu (Lark) custom robots accept, how they are signed and what their replies
mean. The business-alert webhook sink (``sinks.webhook``) and the Alertmanager bridge
(``ops.alert_bridge``) both send through it.

Callers build the message *text* (markdown, in whatever language) and a short plain *title*;
this module only shapes them into each robot's request:

- ``wecom``: ``{"msgtype": "markdown", "markdown": {"content": text}}`` (the title is not
  sent: WeCom's markdown has none, so the text should start with it), at most 4,096 bytes;
- ``dingtalk``: ``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}}``; with a
  secret, ``timestamp`` (ms) and ``sign`` are added to the URL's query string;
- ``feishu``: an ``interactive`` card with the title as its header and the text as one
  ``markdown`` element; with a secret, ``timestamp`` (s) and ``sign`` are added to the body.

DingTalk and Feishu sign the same string, ``"<timestamp>\\n<secret>"``, with HMAC-SHA256,
base64-encoded: DingTalk uses the secret as the key and the string as the message, Feishu the
string as the key and an empty message. Both refuse a timestamp more than an hour old, so a
request is signed when it is sent (each retry again).

>>> url, body = robot_request("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=t",
...                           "title", "**text**", secret="SEC", now=1767225600.0)
>>> url.split("&", 1)[1]
'timestamp=1767225600000&sign=8Otaw%2BzyeUyW8ERg%2FlSplbWY%2BD43Urt7AYOBVtEMGKY%3D'
>>> orjson.loads(body)["markdown"]
{'title': 'title', 'text': '**text**'}
>>> sorted(orjson.loads(robot_request("feishu", "https://f", "t", "x", "SEC", now=1767225600.0)[1]))
['card', 'msg_type', 'sign', 'timestamp']
>>> reply_error("wecom", b'{"errcode":45009,"errmsg":"api freq out of limit"}')
RobotError(retryable=True, message='wecom errcode 45009: api freq out of limit')
>>> reply_error("feishu", b'{"code":0,"msg":"success"}') is None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass
from typing import Final, Literal, get_args

import orjson

RobotFormat = Literal["wecom", "dingtalk", "feishu"]
ROBOT_FORMATS: Final[tuple[str, ...]] = get_args(RobotFormat)
#: The largest text each robot takes (bytes of UTF-8); longer text is cut, ending in "...".
MAX_TEXT_BYTES: Final[dict[str, int]] = {"wecom": 4096, "dingtalk": 18_000, "feishu": 18_000}
#: Reply codes that mean "too many messages, later": the robots' rate limits.
_RATE_LIMITED: Final[dict[str, frozenset[int]]] = {
    "wecom": frozenset({45009}), "dingtalk": frozenset({130101, 660026}), "feishu": frozenset({9499, 11232}),
}
#: How each robot's markdown colours a word: WeCom's three named colours, Feishu's card colours.
_COLOURS: Final[dict[str, dict[str, str]]] = {
    "wecom": {"critical": "warning", "high": "warning", "warning": "warning", "medium": "comment",
              "low": "info", "info": "info", "resolved": "info"},
    "feishu": {"critical": "red", "high": "red", "warning": "orange", "medium": "orange",
               "low": "grey", "info": "grey", "resolved": "green"},
}


@dataclass(frozen=True)
class RobotError:
    """A robot's refusal in an HTTP 200 reply; ``retryable`` for its rate limit."""

    retryable: bool
    message: str


def is_robot(fmt: str) -> bool:
    """Whether ``fmt`` names a group robot (``json`` and other formats do not)."""
    return fmt in ROBOT_FORMATS


def coloured(fmt: str, word: str, level: str) -> str:
    """``word`` coloured by ``level`` (a severity, or ``resolved``) where the robot's markdown
    has colours (WeCom, Feishu; DingTalk's has none that every client shows).

    >>> coloured("wecom", "HIGH", "high"), coloured("feishu", "HIGH", "high"), coloured("dingtalk", "HIGH", "high")
    ('<font color="warning">HIGH</font>', "<font color='red'>HIGH</font>", 'HIGH')
    """
    colour = _COLOURS.get(fmt, {}).get(level)
    if colour is None:
        return word
    if fmt == "feishu":
        return f"<font color='{colour}'>{word}</font>"
    return f'<font color="{colour}">{word}</font>'


def truncate(fmt: str, text: str) -> str:
    """``text`` cut to what the robot takes, at a character boundary."""
    limit = MAX_TEXT_BYTES.get(fmt, 18_000)
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit - 3].decode("utf-8", "ignore") + "..."


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: base64(HMAC-SHA256(key=secret, "timestamp\\nsecret"))."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's signature: base64(HMAC-SHA256(key="timestamp\\nsecret", empty message))."""
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def robot_payload(fmt: str, title: str, text: str, level: str = "") -> dict[str, object]:
    """The unsigned request body for robot ``fmt`` with ``title`` and markdown ``text``;
    ``level`` (a severity, or ``resolved``) colours a Feishu card's header."""
    text = truncate(fmt, text)
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": text}}
    if fmt == "dingtalk":
        return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    if fmt == "feishu":
        header: dict[str, object] = {"title": {"tag": "plain_text", "content": title}}
        if level in _COLOURS["feishu"]:
            header["template"] = _COLOURS["feishu"][level]
        return {"msg_type": "interactive",
                "card": {"config": {"wide_screen_mode": True}, "header": header,
                         "elements": [{"tag": "markdown", "content": text}]}}
    raise ValueError(f"not a robot format: {fmt!r} (one of {', '.join(ROBOT_FORMATS)})")


def robot_request(fmt: str, url: str, title: str, text: str, secret: str = "",
                  now: float | None = None, level: str = "") -> tuple[str, bytes]:
    """The URL and body of one message to robot ``fmt`` at ``url``, signed with ``secret``
    (DingTalk, Feishu) when it is set, at ``now`` (default: the clock)."""
    payload = robot_payload(fmt, title, text, level)
    when = time.time() if now is None else now
    if secret and fmt == "dingtalk":
        timestamp_ms = int(when * 1000)
        query = urllib.parse.urlencode({"timestamp": timestamp_ms, "sign": dingtalk_sign(secret, timestamp_ms)})
        url = f"{url}{'&' if '?' in url else '?'}{query}"
    elif secret and fmt == "feishu":
        payload = {"timestamp": str(int(when)), "sign": feishu_sign(secret, int(when)), **payload}
    return url, orjson.dumps(payload)


def reply_error(fmt: str, reply: bytes) -> RobotError | None:
    """What the robot's HTTP 200 ``reply`` refuses, or None when it accepted the message.
    WeCom and DingTalk answer ``{"errcode": 0, ...}``, Feishu ``{"code": 0, ...}`` (older
    robots ``{"StatusCode": 0, ...}``); an unreadable reply is retried."""
    try:
        answer = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return RobotError(True, f"{fmt}: unreadable reply {reply[:80]!r}")
    if not isinstance(answer, dict):
        return RobotError(True, f"{fmt}: unexpected reply {reply[:80]!r}")
    if fmt == "feishu":
        code = answer.get("code", answer.get("StatusCode", 0))
        message = answer.get("msg", answer.get("StatusMessage", ""))
        name = "code"
    else:
        code, message, name = answer.get("errcode", 0), answer.get("errmsg", ""), "errcode"
    if code in (0, None):
        return None
    return RobotError(code in _RATE_LIMITED.get(fmt, frozenset()), f"{fmt} {name} {code}: {message}")
