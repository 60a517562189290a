"""Four features of the dashboard in headless Chromium against the real parts: the engine
live on a private Redis (events injected into its input stream), the dashboard served over
that Redis, and the real ``cryptography`` library: encryption at rest (what each role's page
shows, including what arrives over server-sent events), customer voice (a complaint
escalation on the RM's page), fair recommendations (the risk view's drift table) and the
case pages in Chinese. Screenshots go to each test's temporary directory."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from schemas.outputs import format_ts
from tests.dashboard_env import EventStream, dashboard, sign_in
from tests.live_engine import engine_settings, history, inject, live_engine, wait_for
from tests.services import redis_server
from tests.test_crypto import CARD_2, key_file, pii_found, pii_stream, with_crypto
from tests.test_fairness import product_catalogue, under_served_events

ENVELOPE = "pii1."


def test_sealed_personal_fields_opened_for_analysts_masked_for_admins_live(browser: Any, tmp_path: Path) -> None:
    """With ``[crypto] enabled`` in the engine and the dashboard (one key file): a takeover
    arrives live on an analyst's and an admin's open pages and in an admin's event stream;
    the analyst's alert and case timelines show the payee's card number opened, the admin's
    pages and stream show ``***`` and never an envelope or any personal data of the input."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    keys = key_file(tmp_path)
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = with_crypto(engine_settings(srv.url, "ebr:", tmp_path, recent_events=20), keys)
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            analyst, admin = sign_in(browser, dash.url, "ana"), sign_in(browser, dash.url, "root")
            admin_stream = EventStream(dash.login("root")[0])
            inject(client, settings, *pii_stream("c-enc-b", "rm001", time.time()))
            # both pages were open before the events: the alert arrives over the live stream
            analyst.wait_for_selector('#queue-body tr.new[data-customer="c-enc-b"]', timeout=20_000)
            admin.wait_for_selector("#queue-body tr.new", timeout=20_000)
            wait_for(lambda: {"alert", "case"} <= {k for k, _ in admin_stream.events}, what="an alert and a case")
            sse = "\n".join(data for _, data in admin_stream.events)
            assert ENVELOPE not in sse and not pii_found(sse) and "c-enc-b" not in sse, sse
            assert admin.get_attribute("#queue-body tr.new", "data-customer") == "***"
            live_html = admin.content()
            assert ENVELOPE not in live_html and not pii_found(live_html) and "c-enc-b" not in live_html

            analyst.click('#queue-body tr[data-customer="c-enc-b"]')
            steal = '#detail li.tl-event[data-event="c-enc-b-steal"]'
            analyst.wait_for_selector(steal)
            assert CARD_2 in analyst.inner_text(steal)
            assert ENVELOPE not in analyst.content()
            analyst.screenshot(path=str(shots / "crypto-analyst-alert.png"), full_page=True)
            # the case the takeover opened: its timeline opened for the analyst too
            analyst.click('#cases-body tr[data-customer="c-enc-b"]')
            analyst.wait_for_selector('#case-detail li.tl-event[data-event="c-enc-b-steal"]')
            assert CARD_2 in analyst.inner_text('#case-detail li.tl-event[data-event="c-enc-b-steal"]')
            assert ENVELOPE not in analyst.content()
            analyst.screenshot(path=str(shots / "crypto-analyst-case.png"), full_page=True)
            analyst.click("#case-propose-report")  # the printable report names the payee too
            report = analyst.request.get(dash.url + analyst.get_attribute("#case-html", "href")).text()
            assert CARD_2 in report and ENVELOPE not in report

            # an admin sees no customer id, nor the event ids made of it: the takeover by its amount
            admin.click("#queue-body tr.new")
            steal = 'li.tl-event:has-text("48,000.00")'
            admin.wait_for_selector(f"#detail {steal}")
            assert admin.inner_text(f"#detail {steal}").endswith("to ***")
            admin.click("#cases-body tr")
            admin.wait_for_selector(f"#case-detail {steal}")
            assert admin.inner_text(f"#case-detail {steal}").endswith("to ***")
            admin.screenshot(path=str(shots / "crypto-admin.png"), full_page=True)
            shown = admin.content()
            assert ENVELOPE not in shown and not pii_found(shown) and "c-enc-b" not in shown, pii_found(shown)
        print(f"screenshots in {shots}")


def test_a_complaint_to_the_regulator_reaches_the_rms_page_live(browser: Any, tmp_path: Path) -> None:
    """A customer of rm001 with some history writes that they will complain to the regulator:
    the engine's ``complaint_escalation`` arrives on the RM's open page, quoting the text
    with the card number masked; another RM's page does not show it."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "vbr:", tmp_path, recent_events=20)
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            now = time.time()
            inject(client, settings, *history("c-voice", "rm001", now))
            rm, other = sign_in(browser, dash.url, "rm1"), sign_in(browser, dash.url, "rm2")
            inject(client, settings, {"kind": "app", "event_id": "c-voice-complaint", "ts": format_ts(now),
                                      "customer_id": "c-voice", "action": "complaint",
                                      "properties": {"text": "卡号6222020212345678又被冻结了，我要去金融监管总局投诉"}})
            card = '#complaints li[data-customer="c-voice"]'
            rm.wait_for_selector(card, timeout=30_000)
            text = rm.inner_text(card)
            assert "threatens a complaint to the regulator" in text and "金融监管总局投诉" in text, text
            assert "6222020212345678" not in text and "***" in text, text
            rm.screenshot(path=str(shots / "rm-complaint.png"), full_page=True)
            # the RM opens the customer: the complaint escalation is in the timeline
            rm.click(f"{card} a")
            rm.wait_for_selector('#rm-detail li.tl-alert[data-event="c-voice-complaint"]')
            assert other.query_selector(card) is None and "c-voice" not in other.inner_text("#rm")
        print(f"screenshots in {shots}")


def test_fairness_drift_from_the_live_engine_in_the_risk_view_not_the_rms(browser: Any, tmp_path: Path) -> None:
    """Men get no prompt at their large credits (no product suits them), women do: the live
    engine's ``fairness_drift`` for gender shows in the analyst's and the admin's table with
    the group and its ratio; an RM's page has no such table."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        base = engine_settings(srv.url, "fbr:", tmp_path)
        settings = replace(base, nba=replace(base.nba, catalogue=str(product_catalogue(tmp_path / "actions.toml")),
                                             fairness=replace(base.nba.fairness, min_customers=5)))
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            analyst = sign_in(browser, dash.url, "ana")
            inject(client, settings, *under_served_events(time.time() - 10 * 86400))
            row = '#fairness-body tr[data-dimension="gender"]'
            analyst.wait_for_selector(row, timeout=30_000)  # the page reloads the table as alerts arrive
            cells = analyst.inner_text(row).split("\t")
            assert cells[1:5] == ["gender", "male", "exposure", "0.000"] and cells[6] == "0.000", cells
            assert analyst.get_attribute(f"{row} td:nth-child(7)", "class") == "breach"
            assert analyst.is_hidden("#fairness-none")
            analyst.screenshot(path=str(shots / "risk-fairness.png"), full_page=True)
            admin = sign_in(browser, dash.url, "root")
            admin.wait_for_selector(row)
            assert admin.inner_text(row).split("\t") == cells
            rm = sign_in(browser, dash.url, "rm1")
            rm.wait_for_selector("#rm", state="visible")
            assert rm.is_hidden("#fairness") and not rm.query_selector_all("#fairness-body tr")
            assert "gender" not in rm.inner_text("body") and "fairness" not in rm.inner_text("body").lower()
        print(f"screenshots in {shots}")
