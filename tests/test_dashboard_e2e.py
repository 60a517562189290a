"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright's bundled
driver; no browser download): the engine runs live on a private Redis, events are
injected into its input stream, and people use the pages. Screenshots go to the test's
temporary directory."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import DisplaySettings
from schemas.redis_keys import RedisKeys
from tests.challenger_stream import quick_challenger, xor_events
from tests.dashboard_env import dashboard, sign_in
from tests.live_engine import engine_settings, history, inject, live_engine, takeover, wait_for
from tests.services import redis_server


def test_risk_and_rm_views_live_with_feedback_to_the_engine(browser: object, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    registry = CollectorRegistry()

    def feedback(label: str) -> float:
        return registry.get_sample_value("crm_engine_model_feedback_total", {"label": label}) or 0.0

    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "e2e:", tmp_path, recent_events=20)
        with live_engine(settings, registry), dashboard(settings, tmp_path) as dash:
            now = time.time()
            inject(client, settings, *history("c-e2e-1", "rm001", now))
            analyst = sign_in(browser, dash.url, "ana")
            # an injected suspicious transaction appears in the risk view within 1 s
            started = time.monotonic()
            inject(client, settings, *takeover("c-e2e-1", now))
            analyst.wait_for_selector('#queue-body tr[data-customer="c-e2e-1"]', timeout=1000)  # type: ignore[attr-defined]
            seen_after = time.monotonic() - started
            analyst.screenshot(path=str(shots / "risk-live-alert.png"))  # type: ignore[attr-defined]
            assert seen_after < 1.0
            print(f"alert visible {seen_after * 1000:.0f} ms after the transaction was injected")
            # the analyst opens it and closes it as fraud; the engine receives the label
            analyst.click('#queue-body tr[data-customer="c-e2e-1"]')  # type: ignore[attr-defined]
            analyst.wait_for_selector("#act-fraud")  # type: ignore[attr-defined]
            # the timeline shows the customer's events around the alert: the takeover's transaction
            analyst.wait_for_selector('#detail li.tl-event[data-event="c-e2e-1-steal"]')  # type: ignore[attr-defined]
            analyst.wait_for_selector('#detail li.tl-event[data-event="c-e2e-1-reset"]')  # type: ignore[attr-defined]
            analyst.screenshot(path=str(shots / "risk-detail.png"))  # type: ignore[attr-defined]
            analyst.click("#act-fraud")  # type: ignore[attr-defined]
            analyst.wait_for_selector("#detail-status:text('closed_fraud')")  # type: ignore[attr-defined]
            wait_for(lambda: feedback("fraud") == 1.0)
            sent = [orjson.loads(f[b"data"]) for _, f in client.xrange(RedisKeys("e2e:").input_stream("feedback:in"))]
            label = [e for e in sent if e.get("label") == "fraud"]
            assert len(label) == 1 and label[0]["ref_event_id"] == "c-e2e-1-steal"
            analyst.screenshot(path=str(shots / "risk-closed.png"))  # type: ignore[attr-defined]

            # an RM accepts a prompt (the engine's, on a large credit) and it leaves the queue
            rm = sign_in(browser, dash.url, "rm1")
            inject(client, settings, *history("c-e2e-2", "rm001", now),
                   {"kind": "transaction", "event_id": "c-e2e-2-credit", "ts": takeover("c-e2e-2", now)[1]["ts"],
                    "customer_id": "c-e2e-2", "amount": 250_000.0, "direction": "credit",
                    "txn_type": "transfer", "channel": "app"})
            card = '#prompts li[data-customer="c-e2e-2"]'
            rm.wait_for_selector(card, timeout=10_000)  # type: ignore[attr-defined]
            rm.screenshot(path=str(shots / "rm-prompt.png"))  # type: ignore[attr-defined]
            rm.click(f"{card} button.accept")  # type: ignore[attr-defined]
            rm.wait_for_selector(card, state="detached")  # type: ignore[attr-defined]
            rm.wait_for_selector('#accepted li[data-customer="c-e2e-2"]')  # type: ignore[attr-defined]
            wait_for(lambda: feedback("nba_accepted") == 1.0)
            rm.screenshot(path=str(shots / "rm-accepted.png"))  # type: ignore[attr-defined]
            assert {p.name for p in shots.iterdir()} >= {"risk-live-alert.png", "rm-accepted.png"}
            print(f"screenshots in {shots}")


def test_champion_and_challenger_figures_reach_metrics_audit_and_the_risk_view(browser: object,
                                                                              tmp_path: Path) -> None:
    """Live, from the Redis input stream: the challenger that is better on the delayed labels
    is promoted; its figures are in the metrics, the change in the Redis audit log, and both
    in the risk view."""
    registry = CollectorRegistry()

    def gauge(name: str, model: str) -> float | None:
        return registry.get_sample_value(f"crm_engine_model_{name}", {"model": model})

    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "cc:", tmp_path)
        settings = replace(settings, fraud=quick_challenger(settings.fraud))
        with live_engine(settings, registry):
            pipe = client.pipeline(transaction=False)
            for event in xor_events():
                pipe.xadd(RedisKeys("cc:").input_stream("feedback:in"), {"data": orjson.dumps(event)})
            pipe.execute()
            change = orjson.loads(wait_for(lambda: client.hget(RedisKeys("cc:").models(), "change"), timeout=120,
                                           what="a change of champion in Redis"))
            assert (change["action"], change["from_model"], change["to_model"]) == ("promoted", "linear", "gbm")
            wait_for(lambda: gauge("champion", "gbm") == 1.0, what="the champion gauge")
            assert gauge("champion", "linear") == 0.0
            assert (gauge("prequential_average_precision", "gbm") or 0.0) > (
                gauge("prequential_average_precision", "linear") or 1.0)
            assert (gauge("prequential_auc", "gbm") or 0.0) > (gauge("prequential_auc", "linear") or 1.0)
            assert registry.get_sample_value("crm_engine_model_champion_changes_total", {"action": "promoted"}) == 1.0
            def audited() -> list[str]:
                entries = [orjson.loads(entry) for entry in client.lrange(RedisKeys("cc:").audit_log("audit"), 0, -1)]
                return [e["id"] for e in entries if e["kind"] == "model_change"]
            assert wait_for(audited, what="the change in the audit log") == [change["change_id"]]
            with dashboard(settings, tmp_path) as dash:
                analyst = sign_in(browser, dash.url, "ana")
                row = '#models-body tr[data-model="gbm"]'
                analyst.wait_for_selector(row)  # type: ignore[attr-defined]
                assert analyst.inner_text(row).split("\t")[-1] == "champion"  # type: ignore[attr-defined]
                assert "linear -> gbm (promoted)" in analyst.inner_text("#models-change")  # type: ignore[attr-defined]
                analyst.screenshot(path=str(tmp_path / "risk-models.png"))  # type: ignore[attr-defined]


#: What the case pages and the report say, per locale: the note, the history's actions, the
#: report's title; in Chinese every heading, button and status of the case pages too.
CASE_WORDS = {
    "en": {"note": "new payee and device right after a password reset", "proposed": "proposed",
           "approved": "approved", "report": "Suspicious-transaction report"},
    "zh-CN": {"note": "密码重置后立即向新收款方转账，且使用新设备", "proposed": "拟定结论", "approved": "复核通过",
              "report": "可疑交易报告", "open": "待处理", "closed": "已结案",
              "headings": ["告警组", "办理记录", "时间线"],
              "buttons": ["添加备注", "分派给我", "拟定：确认欺诈", "拟定：上报可疑交易", "拟定：无需处理"],
              "waiting": "等待另一位分析师复核", "approve": "复核通过", "exports": "报告（CSV） · 报告（打印版）",
              "sections": ["案件", "客户", "交易", "告警原因", "时间线", "结论", "办理记录"],
              "columns": ["时间 (UTC)", "编号", "内容", "金额", "币种", "经办人"]},
}
CJK = re.compile(r"[\u4e00-\u9fff]")


def chinese_only(text: str, *allowed: str) -> bool:
    """Whether ``text`` is Chinese with no English word left, once the ``allowed`` texts (ids,
    usernames, codes) are taken out."""
    for word in allowed:
        text = text.replace(word, "")
    return bool(CJK.search(text)) and not re.search(r"[A-Za-z]{2,}", text)


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
def test_case_flow_note_propose_approve_by_another_analyst_and_export(browser: object, tmp_path: Path,
                                                                       locale: str) -> None:
    """A takeover opens a case; one analyst notes it and proposes a report, another approves
    it (which closes the alert and sends its fraud label to the engine), and the report is
    exported as CSV and as a printable page. With ``[display] locale = "zh-CN"`` the case
    list, the case's page and the report are in Chinese."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    words = CASE_WORDS[locale]
    zh = locale == "zh-CN"
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        settings = engine_settings(srv.url, "case:", tmp_path, recent_events=20)
        settings = replace(settings, display=DisplaySettings(locale=locale))
        with live_engine(settings), dashboard(settings, tmp_path) as dash:
            now = time.time()
            inject(client, settings, *history("c-case-e2e", "rm001", now), *takeover("c-case-e2e", now))
            maker = sign_in(browser, dash.url, "ana")
            row = '#cases-body tr[data-customer="c-case-e2e"]'
            maker.wait_for_selector(row, timeout=20_000)  # type: ignore[attr-defined]
            if zh:
                assert maker.inner_text(f"{row} td.status") == words["open"]  # type: ignore[attr-defined]
                maker.screenshot(path=str(shots / "case-list.png"))  # type: ignore[attr-defined]
            maker.click(row)  # type: ignore[attr-defined]
            maker.wait_for_selector('#case-status[data-status="open"]')  # type: ignore[attr-defined]
            maker.wait_for_selector('#case-detail li.tl-event[data-event="c-case-e2e-steal"]')  # type: ignore[attr-defined]
            maker.fill("#case-note-text", words["note"])  # type: ignore[attr-defined]
            maker.click("#case-note")  # type: ignore[attr-defined]
            maker.wait_for_selector('#case-log li[data-action="noted"]')  # type: ignore[attr-defined]
            maker.screenshot(path=str(shots / "case-open-noted.png"))  # type: ignore[attr-defined]
            if zh:
                case_id = maker.get_attribute("#case-detail", "data-case")  # type: ignore[attr-defined]
                assert maker.inner_text("#case-detail h2") == f"案件 {case_id} — 客户 c-case-e2e"  # type: ignore[attr-defined]
                assert maker.eval_on_selector_all("#case-detail h3", "hs => hs.map(h => h.textContent)") == (  # type: ignore[attr-defined]
                    words["headings"])
                assert maker.eval_on_selector_all(  # type: ignore[attr-defined]
                    "#case-detail button", "bs => bs.map(b => b.textContent)") == words["buttons"]
                assert chinese_only(maker.inner_text("#case-detail > p"), case_id, "ana")  # type: ignore[attr-defined]
                assert chinese_only(maker.inner_text("#case-log"), "ana")  # type: ignore[attr-defined]
            maker.click("#case-propose-report")  # type: ignore[attr-defined]
            maker.wait_for_selector('#case-status[data-status="proposed"]')  # type: ignore[attr-defined]
            maker.wait_for_selector("#case-waiting")  # the maker cannot approve  # type: ignore[attr-defined]
            assert maker.query_selector("#case-approve") is None  # type: ignore[attr-defined]
            maker.screenshot(path=str(shots / "case-proposed.png"))  # type: ignore[attr-defined]
            if zh:
                assert maker.inner_text("#case-waiting") == words["waiting"]  # type: ignore[attr-defined]

            checker = sign_in(browser, dash.url, "bea")
            checker.click(row)  # type: ignore[attr-defined]
            checker.wait_for_selector('#case-status[data-status="proposed"]')  # type: ignore[attr-defined]
            if zh:
                assert checker.inner_text("#case-approve") == words["approve"]  # type: ignore[attr-defined]
            checker.click("#case-approve")  # type: ignore[attr-defined]
            checker.wait_for_selector('#case-status[data-status="closed"]')  # type: ignore[attr-defined]
            checker.wait_for_selector('#case-log li[data-action="approved"]')  # type: ignore[attr-defined]
            checker.screenshot(path=str(shots / "case-approved.png"), full_page=True)  # type: ignore[attr-defined]
            if zh:
                assert checker.inner_text("#case-status") == words["closed"]  # type: ignore[attr-defined]
                assert chinese_only(checker.inner_text("#case-log"), "ana", "bea")  # type: ignore[attr-defined]
                assert words["exports"] in checker.inner_text("#case-detail")  # type: ignore[attr-defined]
            sent = [orjson.loads(f[b"data"]) for _, f in client.xrange(RedisKeys("case:").input_stream("feedback:in"))]
            labels = [e for e in sent if e.get("kind") == "feedback" and e["customer_id"] == "c-case-e2e"]
            assert [(e["label"], e["ref_event_id"]) for e in labels] == [("fraud", "c-case-e2e-steal")]
            # the maker's page follows live; the export links are there for a report
            maker.wait_for_selector('#case-status[data-status="closed"]')  # type: ignore[attr-defined]
            csv_href = maker.get_attribute("#case-csv", "href")  # type: ignore[attr-defined]
            html_href = maker.get_attribute("#case-html", "href")  # type: ignore[attr-defined]
            csv_text = maker.request.get(dash.url + csv_href).text()  # type: ignore[attr-defined]
            assert "c-case-e2e-steal" in csv_text and words["approved"] in csv_text and "bea" in csv_text
            maker.goto(dash.url + html_href)  # type: ignore[attr-defined]
            maker.wait_for_selector("#report-decision")  # type: ignore[attr-defined]
            decisions = maker.inner_text("#report-decision")  # type: ignore[attr-defined]
            assert words["proposed"] in decisions and "ana" in decisions and words["approved"] in decisions
            assert "bea" in decisions and maker.inner_text("h1") == words["report"]  # type: ignore[attr-defined]
            maker.screenshot(path=str(shots / "case-report.png"), full_page=True)  # type: ignore[attr-defined]
            if zh:
                assert maker.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)") == (  # type: ignore[attr-defined]
                    words["sections"])
                assert maker.eval_on_selector_all(  # type: ignore[attr-defined]
                    "#report-case th", "ts => ts.map(t => t.textContent)") == words["columns"]
                for section in ("case", "decision"):
                    what = maker.eval_on_selector_all(  # type: ignore[attr-defined]
                        f"#report-{section} td:nth-child(3)", "ts => ts.map(t => t.textContent)")
                    assert all(chinese_only(text, "ana") for text in what), what
                assert chinese_only(maker.inner_text(".meta"), case_id, "ana", "UTC")  # type: ignore[attr-defined]
            print(f"screenshots in {shots}")


def test_an_admin_runs_a_rule_backtest_from_the_page(browser: object, sim_stream: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    events, _ = sim_stream
    with redis_server(tmp_path) as srv:
        settings = engine_settings(srv.url, "btp:", tmp_path)
        settings = replace(settings, dashboard=replace(settings.dashboard, backtest_input=str(events)))
        with dashboard(settings, tmp_path) as dash:
            admin = sign_in(browser, dash.url, "root")
            admin.wait_for_selector("#backtest", state="visible")  # type: ignore[attr-defined]
            admin.fill("#bt-changes", "rules.large_amount_ratio=2.5")  # type: ignore[attr-defined]
            admin.click("#bt-run")  # type: ignore[attr-defined]
            admin.wait_for_selector('#bt-body tr[data-status="done"]', timeout=300_000)  # type: ignore[attr-defined]
            cells = admin.inner_text('#bt-body tr[data-status="done"]').split("\t")  # type: ignore[attr-defined]
            current, changed = (int(n) for n in cells[4].split(" / "))
            assert changed > current > 0 and "%" in cells[5]
            admin.screenshot(path=str(tmp_path / "admin-backtest.png"), full_page=True)  # type: ignore[attr-defined]
