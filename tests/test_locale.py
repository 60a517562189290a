"""Chinese-language output (``[display] locale = "zh-CN"``): alert and prompt reasons, chat
messages and the dashboard, with amounts in CNY and times in Beijing time, while the data
keeps its codes, scores and UTC times. The dashboard and a WeCom message are rendered in
headless Chromium; the screenshots go to the test's temporary directory."""

from __future__ import annotations

import contextlib
import html
import re
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from config.settings import ConfigError, DisplaySettings, load_settings
from schemas.outputs import Alert, Reason
from schemas.texts import LOCALES, REASONS, render_reason
from sinks.webhook import alert_text
from tests.conftest import replay
from tests.dashboard_env import PASSWORD, dashboard
from tests.live_engine import engine_settings, history, inject, live_engine, takeover
from tests.services import Receiver, redis_server, wait_until

CJK = re.compile(r"[\u4e00-\u9fff]")
#: Arguments of the right kinds for every reason code the catalogue knows.
SAMPLE_ARGS = {"amount": 12000.0, "currency": "CNY", "ratio": 8.2, "typical": 1500.0, "count": 9, "inflow": 50000.0,
               "country": "SG", "horizon_days": 30, "silent_days": 40.0, "usual_gap": 7.0, "recent_gap": 20.0,
               "signals": [["complaint", 0.8], ["outflow", 0.4]], "source": "td_maturity", "product": "FND-MMF-01",
               "seconds": 95.0, "days": 120.0, "score": 0.72, "risk": 2, "grade": 3, "mean": 0.31, "eligible": 4,
               "signal": "voice_exit_intent", "phrase": "close my account *** now", "usual": 0.1, "recent": -0.6,
               "dimension": "segment", "group": "affluent", "metric": "exposure", "rate": 0.05, "best": 0.4,
               "threshold": 0.8}


def zh_settings(**display: str):  # type: ignore[no-untyped-def]
    s = load_settings(environ={})
    return replace(s, display=DisplaySettings(locale="zh-CN", **display))


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_reason_renders_in_every_locale(code: str) -> None:
    texts = {locale: render_reason(code, locale, SAMPLE_ARGS) for locale in LOCALES}
    assert all(texts.values())
    assert CJK.search(texts["zh-CN"]) and not CJK.search(texts["en"])


def test_amounts_and_times_are_written_for_the_locale() -> None:
    reason = Reason.of("large_vs_history", 8.0, 0.35, amount=1234567.5, ratio=8.0, typical=154320.9375,
                       currency="CNY")
    assert reason.text == "amount 1,234,567.50 is 8.0x the customer's typical 154,320.94"
    assert reason.localized("zh-CN").text == "金额 ¥1,234,567.50，为该客户常规金额 ¥154,320.94 的 8.0 倍"
    usd = Reason.of("dormant_reactivation", 9000.0, 0.4, amount=9000.0, currency="USD")
    assert usd.localized("zh-CN").text == "长期休眠后转出 9,000.00 USD"
    alert = Alert("al-1", "aml_pattern", "critical", 0.97, "c1", None, "e1", "2026-06-30T16:30:00.000Z",
                  "2026-06-30T16:30:00.010Z", (usd,), "m1", status="escalated")
    title, body = alert_text(alert, "wecom", "zh-CN")
    assert title == "严重 反洗钱可疑模式，客户 c1"
    assert body.startswith('**<font color="warning">严重</font> 反洗钱可疑模式** (已升级)')
    assert "事件时间：2026-07-01 00:30:00 (北京时间)" in body  # UTC+8 crosses midnight
    assert "客户经理：-" in body
    # another display time zone; the data's time is untouched
    assert "2026-06-30 12:30:00 (America/New_York)" in alert_text(alert, "wecom", "zh-CN", "America/New_York")[1]
    assert alert.event_ts == "2026-06-30T16:30:00.000Z"


def test_a_reason_without_arguments_keeps_its_text() -> None:
    old = Reason("large_vs_history", "amount 9.00 is 3.0x the customer's typical 3.00", 3.0, 0.35)  # before args
    assert old.localized("zh-CN").text == old.text
    unknown = Reason("custom_rule", "a rule of the bank's own", None, 0.5)
    assert unknown.localized("zh-CN").text == unknown.text


def test_bad_display_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"display\.locale"):
        load_settings(environ={"CRM__DISPLAY__LOCALE": "fr-FR"})
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        load_settings(environ={"CRM__DISPLAY__TIMEZONE": "Mars/Olympus"})
    assert load_settings(environ={"CRM__DISPLAY__LOCALE": "zh-CN"}).display.zone == "Asia/Shanghai"


def test_the_locale_changes_the_texts_and_nothing_else(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """The same replay in English and in Chinese: the same alerts and prompts (ids, types,
    scores, reason codes, values and arguments); every catalogued reason text and every
    action's title in Chinese."""
    events, _ = sim_stream
    en = replay(events, tmp_path / "en", load_settings(environ={}))
    zh = replay(events, tmp_path / "zh", zh_settings())
    for kind in ("alerts", "prompts"):
        left, right = en.records(kind), zh.records(kind)
        assert len(left) == len(right) > 0
        for a, b in zip(left, right, strict=True):
            ra, rb = a.pop("reasons"), b.pop("reasons")
            a.pop("emitted_at", None), b.pop("emitted_at", None)
            if kind == "prompts":  # the action's title
                assert not CJK.search(a.pop("title")) and CJK.search(b.pop("title"))
            assert a == b
            assert [{**r, "text": ""} for r in ra] == [{**r, "text": ""} for r in rb]
            for r in rb:
                assert (CJK.search(r["text"]) is not None) == (r["code"] in REASONS), r
    assert en.raw("scores") == zh.raw("scores")


# -- in the browser --------------------------------------------------------------------------


def wecom_preview(markdown: str) -> str:
    """A page showing a WeCom markdown message as the client draws its subset (bold, coloured
    text, quotes, list items), for a look in the browser."""
    lines = []
    for raw in markdown.split("\n"):
        line = html.escape(raw)
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        line = re.sub(r"&lt;font color=&quot;(\w+)&quot;&gt;(.+?)&lt;/font&gt;", r'<span class="\1">\2</span>', line)
        if line.startswith("&gt; "):
            line = f"<blockquote>{line[5:]}</blockquote>"
        elif line.startswith("- "):
            line = f"<li>{line[2:]}</li>"
        else:
            line = f"<p>{line}</p>"
        lines.append(line)
    return ('<!doctype html><html lang="zh-CN"><meta charset="utf-8"><style>body{font:15px sans-serif;'
            "width:420px;padding:12px;background:#f4f5f7}.warning{color:#e67e22}.comment{color:#888}"
            "blockquote{margin:4px 0;color:#555}</style><body>" + "".join(lines) + "</body></html>")


def test_the_dashboard_and_a_wecom_message_in_chinese(browser: object, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(redis_server(tmp_path))
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "zh:", tmp_path, recent_events=20)
        robot = stack.enter_context(Receiver())  # a WeCom group robot
        settings = replace(settings, display=DisplaySettings(locale="zh-CN"),
                           webhook=replace(settings.webhook, enabled=True, url=robot.url, format="wecom"))
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            now = time.time()
            inject(client, settings, *history("c-zh-1", "rm001", now))
            inject(client, settings, *takeover("c-zh-1", now))
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # type: ignore[attr-defined]
            page.goto(dash.url)
            page.wait_for_selector("#login-form button:text('登录')")
            page.screenshot(path=str(shots / "zh-sign-in.png"))
            page.fill("#username", "ana")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#live.on", state="attached")
            row = '#queue-body tr[data-customer="c-zh-1"]'
            page.wait_for_selector(row, timeout=10_000)
            assert page.inner_text(f"{row} td:nth-child(2)") == "账户盗用"
            page.click(row)
            page.wait_for_selector("#act-fraud:text('结案：确认欺诈')")
            page.wait_for_selector('#detail li.tl-event[data-event="c-zh-1-steal"]')
            detail = page.inner_text("#detail")
            page.screenshot(path=str(shots / "zh-risk-detail.png"), full_page=True)
            assert "告警原因" in detail and "时间线" in detail
            assert "转出 ¥" in detail  # the takeover rule's reason, the amount in CNY
            assert "交易 支出 ¥" in detail  # the timeline's transaction
            # an RM reads a prompt's action and reasons in Chinese
            inject(client, settings, *history("c-zh-2", "rm001", now),
                   {"kind": "transaction", "event_id": "c-zh-2-credit", "ts": takeover("c-zh-2", now)[1]["ts"],
                    "customer_id": "c-zh-2", "amount": 250_000.0, "direction": "credit", "txn_type": "transfer",
                    "channel": "app"})
            rm = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # type: ignore[attr-defined]
            rm.goto(dash.url)
            rm.fill("#username", "rm1")
            rm.fill("#password", PASSWORD)
            rm.click("button[type=submit]")
            card = '#prompts li[data-customer="c-zh-2"]'
            rm.wait_for_selector(card, timeout=10_000)
            rm.screenshot(path=str(shots / "zh-rm-prompt.png"))
            text = rm.inner_text(card)
            assert "大额入账 ¥250,000.00" in text and "接受" in text, text
            assert CJK.search(rm.inner_text(f"{card} b")), text  # the action's title
            # Beijing time on the page for the event's UTC time
            assert re.search(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}", page.inner_text(f"{row} td:nth-child(1)"))
            # the group robot got the alert as a Chinese WeCom message
            wait_until(lambda: robot.received)
        message = orjson.loads(next(iter(robot.received.values())))
        assert message["msgtype"] == "markdown"
        shown = browser.new_context(viewport={"width": 460, "height": 320}).new_page()  # type: ignore[attr-defined]
        shown.set_content(wecom_preview(message["markdown"]["content"]))
        shown.screenshot(path=str(shots / "zh-wecom-message.png"))
        text = shown.inner_text("body")
        assert "账户盗用" in text and "客户：c-zh-1" in text and "事件时间：" in text and "(北京时间)" in text
        assert "转出 ¥48,000.00" in text
        print(f"screenshots in {shots}")
