"""The text of a chat message about a record (WeCom, DingTalk, Feishu group robots), in the
display locale (``schemas.texts``): a title and a markdown body. How each robot wants it
wrapped is the webhook sink's business; what it says is decided here, once.

>>> from schemas.outputs import Alert, Reason
>>> a = Alert("al-1", "account_takeover", "high", 0.91, "c1", "rm7", "e1",
...           "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:33.900Z",
...           (Reason.of("takeover_sequence", 5000.0, 0.6, amount=5000.0, currency="CNY"),), "m1")
>>> print(alert_markdown(a, "zh-CN")[1])
**<font color="warning">高</font> 账户盗用**
> 客户：c1 · 客户经理：rm7 · 评分：0.91
> 事件时间：2026-01-05 19:56:33 (北京时间) · 告警编号：al-1
- 安全信息变更或登录失败后 24 小时内，向新收款方或从新设备转出 ¥5,000.00
"""

from __future__ import annotations

from typing import Final

from schemas.outputs import Alert, Prompt
from schemas.texts import EN, format_time, label, localized_text

#: WeCom's markdown colours by severity.
COLOR: Final = {"critical": "warning", "high": "warning", "medium": "comment", "low": "info"}


def _field(name: str, locale: str) -> str:
    """``name:`` in English, ``名称：`` in Chinese (full-width colon, no space)."""
    text = label("field", name, locale)
    return f"{text}: " if locale == EN else f"{text}："


def alert_markdown(alert: Alert, locale: str = EN, zone: str = "") -> tuple[str, str]:
    """(title, markdown body) of a message about ``alert``; reasons are rendered in ``locale``
    from their arguments where they have them, times in ``zone`` (default: the locale's).

    >>> from schemas.outputs import Reason
    >>> a = Alert("al-1", "account_takeover", "high", 0.91, "c1", "rm7", "e1",
    ...           "2026-01-05T11:56:33.860Z", "2026-01-05T11:56:33.900Z",
    ...           (Reason("takeover", "password reset then a new payee", None, 0.6),), "m1")
    >>> title, body = alert_markdown(a)
    >>> print(title); print(body)
    HIGH account_takeover
    **<font color="warning">HIGH</font> account_takeover**
    > customer: c1 · RM: rm7 · score: 0.91
    > event time: 2026-01-05T11:56:33.860Z · alert: al-1
    - password reset then a new payee
    """
    severity: str
    kind: str
    if locale == EN:  # the engine's own words: type and severity as the data names them
        severity, kind = alert.severity.upper(), alert.type
    else:
        severity, kind = label("severity", alert.severity, locale), label("alert_type", alert.type, locale)
    status = getattr(alert, "status", None)
    suffix = f" ({label('status', status, locale)})" if status and status != "firing" else ""
    separator = " · "
    lines = [f'**<font color="{COLOR.get(alert.severity, "comment")}">{severity}</font> {kind}**{suffix}',
             "> " + separator.join((f"{_field('customer', locale)}{alert.customer_id}",
                                    f"{_field('rm', locale)}{alert.rm_id or '-'}",
                                    f"{_field('score', locale)}{alert.score:.2f}")),
             "> " + separator.join((f"{_field('event_time', locale)}{format_time(alert.event_ts, locale, zone)}",
                                    f"{_field('alert', locale)}{alert.alert_id}"))]
    lines += [f"- {localized_text(r.code, r.text, r.args, locale)}" for r in alert.reasons]
    return f"{severity} {kind}{suffix}", "\n".join(lines)


def prompt_markdown(prompt: Prompt, locale: str = EN, zone: str = "") -> tuple[str, str]:
    """(title, markdown body) of a message to an RM about a next-best-action ``prompt``.

    >>> from schemas.outputs import Reason
    >>> p = Prompt("nb-1", "c1", "rm7", "offer_time_deposit", "DEP-TD-12M", 0.42,
    ...            (Reason.of("trigger_churn_rising", None, 1.0, score=0.71),), "2026-01-08T00:00:00.000Z",
    ...            "nba-linucb-1", "churn_rising", "e1", "2026-01-05T00:00:00Z", title="推荐 12 个月定期存款")
    >>> print(prompt_markdown(p, "zh-CN")[1])
    **下一步最佳行动：推荐 12 个月定期存款**
    > 客户：c1 · 产品：DEP-TD-12M · 评分：0.42
    > 有效期至：2026-01-08 08:00:00 (北京时间)
    - 流失评分升至 0.71
    """
    head = label("field", "prompt", locale)
    title = f"{head}{': ' if locale == EN else '：'}{prompt.title or label('action', prompt.action, locale)}"
    lines = [f"**{title}**",
             "> " + " · ".join((f"{_field('customer', locale)}{prompt.customer_id}",
                                f"{_field('product', locale)}{prompt.product_id or '-'}",
                                f"{_field('score', locale)}{prompt.score:.2f}")),
             f"> {_field('expires', locale)}{format_time(prompt.expires_at, locale, zone)}"]
    lines += [f"- {localized_text(r.code, r.text, r.args, locale)}" for r in prompt.reasons]
    return title, "\n".join(lines)
