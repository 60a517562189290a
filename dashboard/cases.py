"""Cases: a customer's open fraud alerts grouped for an analyst, worked to a decision that a
second analyst approves (maker-checker), and the suspicious-transaction report.

A case is opened by the indexer when a fraud alert (``suspicious_transaction``,
``account_takeover``, ``aml_pattern``; churn warnings are the RM's) of a customer without an
open case is indexed; while the case is open, the customer's new alert groups join it. A
case is ``open``, then ``proposed`` (one analyst proposes ``fraud``, ``report`` or
``no_action``), then ``closed`` when a different analyst approves; the approval closes every
alert of the case still open (``closed_fraud`` for fraud and report, ``closed_legit`` for no
action) and sends the engine one feedback label per alert closed, as closing an alert does.
A rejection (by another analyst too) sends it back to ``open``. An alert that joins a
proposed case withdraws the proposal: what was proposed is not what would be approved.

Keys (``schemas.redis_keys``, all under ``{dash}``: every script below touches one slot):
``case:{id}`` (hash), ``case:{id}:alerts`` (alert refs by event time), ``case:{id}:log``
(history, JSON), ``ccase:{customer}`` (the customer's open case), ``cases:open`` and
``cases:closed`` (case ids by opening time). Every change is conditional on the case's
change count (``rev``) as read: two analysts acting at once cannot both apply.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final, Literal

import orjson

from dashboard.store import ACTIVE, STATUSES, NotFound, Store
from schemas.events import parse_timestamp
from schemas.outputs import format_ts
from schemas.texts import EN, ZH_CN, label

FRAUD_TYPES: Final = ("suspicious_transaction", "account_takeover", "aml_pattern")
CASE_STATUSES: Final = ("open", "proposed", "closed")
DECISIONS: Final = ("fraud", "report", "no_action")
#: The alert status and the feedback label an approved decision closes the case's alerts with.
CLOSES_AS: Final = {"fraud": ("closed_fraud", "fraud"), "report": ("closed_fraud", "fraud"),
                    "no_action": ("closed_legit", "legit")}
LOG_MAX: Final = 500  # history entries returned with a case

Decision = Literal["fraud", "report", "no_action"]


class Conflict(Exception):
    """The case is not in a state that allows the action (HTTP 409)."""


class SameAnalyst(Exception):
    """Maker-checker: the analyst who proposed cannot approve or reject (HTTP 403)."""


def _now() -> tuple[int, str]:
    t = time.time()
    return int(t * 1000), format_ts(t)


def entry(action: str, by: str, at: str, **more: Any) -> bytes:
    """One history entry of a case."""
    return orjson.dumps({"action": action, "by": by, "at": at, **{k: v for k, v in more.items() if v is not None}})


class Cases:
    """Reads and changes cases over a ``dashboard.store.Store``."""

    def __init__(self, store: Store) -> None:
        self.s, self.r, self.k = store, store.r, store.k
        self._join_new = self.r.register_script(_JOIN_NEW)
        self._join = self.r.register_script(_JOIN)
        self._change = self.r.register_script(_CHANGE)
        self._approve = self.r.register_script(_APPROVE)

    # -- grouping ------------------------------------------------------------------------

    async def join(self, summary: dict[str, Any]) -> tuple[str, bool] | None:
        """Put an indexed alert group in its customer's open case, opening one if there is
        none: ``(case id, opened)``, or None if the alert takes no case (not a fraud type,
        not active, or already in one)."""
        if summary["type"] not in FRAUD_TYPES or summary["status"] not in ACTIVE:
            return None
        customer, ref = summary["customer_id"], summary["ref"]
        ts = int(parse_timestamp(summary["event_ts"]) * 1000)
        for _ in range(10):
            now_ms, now = _now()
            new_id = "case-" + secrets.token_hex(8)
            done, case_id = await self._join_new(
                keys=[self.k.customer_case(customer), self.k.case(new_id), self.k.case_alerts(new_id),
                      self.k.case_log(new_id), self.k.cases("open"), self.k.alert(ref)],
                args=[new_id, ref, ts, customer, summary["cref"], now_ms, now,
                      entry("opened", "-", now, alert=ref), entry("joined", "-", now, alert=ref)])
            case_id = case_id.decode() if isinstance(case_id, bytes) else str(case_id)
            if done in (0, 1):
                return (case_id, True) if done == 1 else None
            joined = await self._join(
                keys=[self.k.customer_case(customer), self.k.case(case_id), self.k.case_alerts(case_id),
                      self.k.case_log(case_id), self.k.alert(ref)],
                args=[case_id, ref, ts, entry("joined", "-", now, alert=ref),
                      entry("proposal_withdrawn", "-", now, reason="an alert joined the case")])
            if joined in (1, 2):
                return (case_id, False) if joined == 1 else None
        raise ConnectionError(f"alert {ref}: its customer's case kept changing")

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _summary(data: dict[bytes, bytes]) -> dict[str, Any]:
        text = {k.decode(): v.decode() for k, v in data.items()}
        return {"id": text["id"], "status": text["status"], "owner": text.get("owner", ""),
                "customer_id": text["customer"], "cref": text["cref"], "opened_at": text["opened_at"],
                "rev": int(text.get("rev", "0")), "proposal": text.get("proposal", ""),
                "proposed_by": text.get("proposed_by", ""), "proposed_at": text.get("proposed_at", ""),
                "decision": text.get("decision", ""), "decided_by": text.get("decided_by", ""),
                "decided_at": text.get("decided_at", ""), "alerts": int(text.get("alerts", "0"))}

    async def get(self, case_id: str) -> dict[str, Any]:
        data = await self.r.hgetall(self.k.case(case_id))
        if not data:
            raise NotFound(case_id)
        return self._summary(data)

    async def page(self, which: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Open (``open`` and ``proposed``) or ``closed`` cases, newest first, and how many."""
        rows, total = await self.s.newest(self.k.cases(which), offset, limit, self.k.case)
        return [self._summary(row) for _, row in rows], total

    async def detail(self, case_id: str) -> dict[str, Any]:
        """The case, its alert groups (summaries, newest first) and its history."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.k.case(case_id))
        pipe.zrevrange(self.k.case_alerts(case_id), 0, -1)
        pipe.lrange(self.k.case_log(case_id), -LOG_MAX, -1)
        data, refs, log = await pipe.execute()
        if not data:
            raise NotFound(case_id)
        pipe = self.r.pipeline(transaction=False)
        for ref in refs:
            pipe.hgetall(self.k.alert(ref.decode()))
        rows = await pipe.execute()
        alerts = [self.s._summary(ref.decode(), row) for ref, row in zip(refs, rows, strict=True) if row]
        return {**self._summary(data), "alert_groups": alerts, "log": [orjson.loads(e) for e in log]}

    # -- changes -------------------------------------------------------------------------

    async def _apply(self, case_id: str, allowed: tuple[str, ...], fields: dict[str, str], log: bytes,
                     clear: tuple[str, ...] = (), check: Any = None) -> dict[str, Any]:
        """Set ``fields`` (and delete ``clear``) on a case in one of ``allowed`` statuses and
        append ``log`` to its history, conditional on the case as read; ``check(case)``
        may refuse first (raise) or say it is a repeat (return True: nothing done)."""
        for _ in range(10):
            case = await self.get(case_id)
            if case["status"] not in allowed:
                raise Conflict(f"the case is {case['status']}")
            if check is not None and check(case):
                return {**case, "changed": False}
            flat = [x for kv in fields.items() for x in kv]
            done = await self._change(keys=[self.k.case(case_id), self.k.case_log(case_id)],
                                      args=[case["rev"], log, len(clear), *clear, *flat])
            if done == 1:
                return {**await self.get(case_id), "changed": True}
        raise Conflict("the case kept changing; try again")

    async def assign(self, case_id: str, owner: str, by: str) -> dict[str, Any]:
        _, now = _now()
        return await self._apply(case_id, ("open", "proposed"), {"owner": owner},
                                 entry("assigned", by, now, owner=owner), check=lambda c: c["owner"] == owner)

    async def note(self, case_id: str, text: str, by: str) -> dict[str, Any]:
        _, now = _now()
        return await self._apply(case_id, ("open", "proposed"), {}, entry("noted", by, now, text=text))

    async def propose(self, case_id: str, decision: str, by: str, reason: str | None) -> dict[str, Any]:
        _, now = _now()

        def repeat(case: dict[str, Any]) -> bool:
            if case["status"] == "proposed":
                if case["proposal"] == decision and case["proposed_by"] == by:
                    return True
                raise Conflict(f"the case is proposed as {case['proposal']} by {case['proposed_by']}")
            return False
        return await self._apply(case_id, ("open", "proposed"),
                                 {"status": "proposed", "proposal": decision, "proposed_by": by, "proposed_at": now},
                                 entry("proposed", by, now, decision=decision, text=reason), check=repeat)

    async def reject(self, case_id: str, by: str, reason: str | None) -> dict[str, Any]:
        _, now = _now()

        def checker(case: dict[str, Any]) -> bool:
            if case["proposed_by"] == by:
                raise SameAnalyst("a proposal is rejected by another analyst than the one who made it")
            return False
        return await self._apply(case_id, ("proposed",), {"status": "open"},
                                 entry("rejected", by, now, text=reason),
                                 clear=("proposal", "proposed_by", "proposed_at"), check=checker)

    async def approve(self, case_id: str, by: str) -> dict[str, Any]:
        """Close the case as proposed and every alert of it still open, sending one feedback
        label per alert closed, atomically; the case and what was sent."""
        for _ in range(10):
            case = await self.detail(case_id)
            if case["status"] == "closed":
                if case["decided_by"] == by:
                    return {**case, "changed": False, "closed_alerts": [], "sent_event_ids": []}
                raise Conflict("the case is closed")
            if case["status"] != "proposed":
                raise Conflict(f"the case is {case['status']}: nothing to approve")
            if case["proposed_by"] == by:
                raise SameAnalyst("a proposal is approved by another analyst than the one who made it")
            status, label = CLOSES_AS[case["proposal"]]
            alerts = case["alert_groups"]
            events = [self.s.feedback_event(a["customer_id"], label, a["event_ts"], ref_event_id=a["alert"]["event_id"],
                                            ref_alert_id=a["alert"]["alert_id"]) for a in alerts]
            now_ms, now = _now()
            closed = await self._approve(
                keys=[self.k.case(case_id), self.k.case_log(case_id), self.k.customer_case(case["customer_id"]),
                      self.k.cases("open"), self.k.cases("closed"), self.s.feedback_key, self.k.queue("active"),
                      *(self.k.queue_by("status", s) for s in STATUSES), *(self.k.alert(a["ref"]) for a in alerts)],
                args=[case["rev"], status, by, now, case_id, now_ms,
                      entry("approved", by, now, decision=case["proposal"], proposed_by=case["proposed_by"]),
                      len(alerts), *(x for a, e in zip(alerts, events, strict=True)
                                     for x in (a["ref"], orjson.dumps(e)))])
            if closed is None or closed == -1:
                continue  # the case changed (an alert joined, a note): read it again
            refs = {r.decode() if isinstance(r, bytes) else str(r) for r in closed}
            sent = [(a, e) for a, e in zip(alerts, events, strict=True) if a["ref"] in refs]
            return {**await self.get(case_id), "changed": True, "closed_alerts": [a["ref"] for a, _ in sent],
                    "sent_event_ids": [e["event_id"] for _, e in sent],
                    "closed": [(a, e["event_id"]) for a, e in sent]}
        raise Conflict("the case kept changing; try again")


# KEYS: 1 the customer's open case, 2 the new case, 3 its alerts, 4 its log, 5 the open
#       cases, 6 the alert group
# ARGV: 1 the new case id, 2 the alert ref, 3 its event time (ms), 4 customer, 5 customer
#       ref, 6 now (ms), 7 now (text), 8 the "opened" entry, 9 the "joined" entry
# Returns {0, ''} (the alert is in a case already), {1, id} (opened), {2, id} (join id).
_JOIN_NEW = """
local current = redis.call('HGET', KEYS[6], 'case')
if current and current ~= '' then
  return {0, current}
end
local open = redis.call('GET', KEYS[1])
if open then
  return {2, open}
end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'status', 'open', 'owner', '', 'customer', ARGV[4],
  'cref', ARGV[5], 'opened_at', ARGV[7], 'opened_ms', ARGV[6], 'rev', 1, 'alerts', 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[8], ARGV[9])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[6], 'case', ARGV[1])
return {1, ARGV[1]}
"""

# KEYS: 1 the customer's open case, 2 the case, 3 its alerts, 4 its log, 5 the alert group
# ARGV: 1 case id, 2 alert ref, 3 its event time (ms), 4 the "joined" entry, 5 the
#       "proposal_withdrawn" entry
# Returns 0 (the case is no longer the customer's open one), 1 (joined), 2 (already in a case).
_JOIN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = redis.call('HGET', KEYS[5], 'case')
if current and current ~= '' then
  return 2
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[5], 'case', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'rev', 1)
redis.call('HINCRBY', KEYS[2], 'alerts', 1)
if redis.call('HGET', KEYS[2], 'status') == 'proposed' then
  redis.call('HSET', KEYS[2], 'status', 'open')
  redis.call('HDEL', KEYS[2], 'proposal', 'proposed_by', 'proposed_at')
  redis.call('RPUSH', KEYS[4], ARGV[5])
end
return 1
"""

# KEYS: 1 the case, 2 its log
# ARGV: 1 the change count read, 2 the history entry, 3 n fields to delete, then those
#       fields, then field/value pairs to set
_CHANGE = """
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
for i = 4 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

_STATUS_INDEX = "{" + ", ".join(f"{s} = {8 + i}" for i, s in enumerate(STATUSES)) + "}"
_ALERTS_FROM = 8 + len(STATUSES)

# KEYS: 1 the case, 2 its log, 3 the customer's open case, 4 the open cases, 5 the closed
#       cases, 6 the engine's input stream, 7 the active alerts, 8.. one set per alert
#       status (STATUSES order), then the case's alert groups
# ARGV: 1 the change count read, 2 the status the alerts close as, 3 by, 4 now (text),
#       5 case id, 6 now (ms), 7 the "approved" entry, 8 n alerts, then per alert its ref
#       and the feedback event to send if it closes
# Returns -1 (the case changed or is not proposed), else the refs of the alerts closed.
_APPROVE = """
local sets = """ + _STATUS_INDEX + """
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'proposed' then
  return -1
end
local closed = {}
for i = 1, tonumber(ARGV[8]) do
  local key = KEYS[""" + str(_ALERTS_FROM) + """ + i - 1]
  local ref, event = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local current = redis.call('HMGET', key, 'status', 'ts')
  if current[1] and string.sub(current[1], 1, 7) ~= 'closed_' then
    redis.call('HSET', key, 'status', ARGV[2])
    redis.call('ZREM', KEYS[sets[current[1]]], ref)
    redis.call('ZADD', KEYS[sets[ARGV[2]]], current[2], ref)
    redis.call('ZREM', KEYS[7], ref)
    redis.call('XADD', KEYS[6], '*', 'data', event)
    closed[#closed + 1] = ref
  end
end
redis.call('HSET', KEYS[1], 'status', 'closed', 'decision', redis.call('HGET', KEYS[1], 'proposal'),
  'decided_by', ARGV[3], 'decided_at', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
if redis.call('GET', KEYS[3]) == ARGV[5] then
  redis.call('DEL', KEYS[3])
end
return closed
"""


# -- the suspicious-transaction report -------------------------------------------------------

REPORT_COLUMNS: Final = ("section", "time", "id", "what", "amount", "currency", "by")

#: The report's words in Chinese (English: the keys themselves): headings, columns, the
#: case's statuses, decisions and history actions, and the words of the rows' texts.
_REPORT_ZH: Final = {
    "Suspicious-transaction report": "可疑交易报告", "generated {at} by {who}": "{who} 生成于 {at}", "Case": "案件",
    "Customer": "客户", "Transactions": "交易", "Reasons": "告警原因", "Timeline": "时间线", "Decisions": "结论",
    "Case history": "办理记录", "time": "时间 (UTC)", "id": "编号", "what": "内容", "amount": "金额",
    "currency": "币种", "by": "经办人", "status": "状态", "proposal": "拟定结论", "decision": "结论", "RM": "客户经理",
    "fraud risk": "欺诈风险", "alert groups in the case": "案件内告警组", "triggered": "触发", "score": "评分",
    "owner": "负责人", "alert": "告警", "text": "内容", "proposed_by": "拟定人",
    "debit": "支出", "credit": "收入", "via": "渠道", "to": "收款方", "from": "付款方",
    "open": "待处理", "proposed": "待复核", "closed": "已结案",
    "fraud": "确认欺诈", "report": "可疑交易报告", "no_action": "无需处理",
    "log:opened": "立案", "log:joined": "告警并入", "log:assigned": "分派", "log:noted": "备注",
    "log:proposed": "拟定结论", "log:rejected": "退回", "log:approved": "复核通过",
    "log:proposal_withdrawn": "拟定结论撤回",
}


def report_word(word: str, locale: str) -> str:
    """``word`` of the report in ``locale`` (English, or a word the table lacks: as it is)."""
    return _REPORT_ZH.get(word, word) if locale == ZH_CN else word


def report_rows(case: dict[str, Any], customer: dict[str, Any], locale: str = EN) -> list[dict[str, str]]:
    """The report's content as rows (``REPORT_COLUMNS``): the case and customer, the
    transactions (those that triggered the case's alerts, and the customer's recent ones the
    engine keeps with ``[redis] recent_events``), the reasons of every alert, the customer's
    timeline and the case's decisions with who and when; the texts in ``locale`` (codes,
    ids, amounts and UTC times as they are)."""
    w = lambda word: report_word(word, locale)  # noqa: E731
    sep = "；" if locale == ZH_CN else "; "

    def row(section: str, time: str = "", id: str = "", what: str = "", amount: str = "", currency: str = "",
            by: str = "") -> dict[str, str]:
        return {"section": section, "time": time, "id": id, "what": what, "amount": amount, "currency": currency,
                "by": by}
    decided = lambda value: w(value) if value else "-"  # noqa: E731
    rows = [row("case", case["opened_at"], case["id"], sep.join((
                f"{w('status')} {w(case['status'])}", f"{w('proposal')} {decided(case['proposal'])}",
                f"{w('decision')} {decided(case['decision'])}")), by=case["owner"]),
            row("customer", "", customer["customer_id"], sep.join((
                f"{w('RM')} {customer.get('rm_id') or '-'}", f"{w('fraud risk')} {_score(customer.get('fraud_risk'))}",
                f"{w('alert groups in the case')} {len(case['alert_groups'])}")))]
    triggers = {a["alert"]["event_id"]: a for a in case["alert_groups"]}
    events = {t["event_id"]: t["event"] for t in customer.get("timeline", [])
              if t["kind"] == "event" and t["event"].get("kind") == "transaction"}
    for event_id in sorted(set(triggers) | set(events)):
        event, alert = events.get(event_id), triggers.get(event_id)
        ts = event["ts"] if event else alert["event_ts"] if alert else ""
        what = _transaction(event, locale) if event else ""
        if alert:
            trigger = (f"triggered {alert['type']} ({alert['severity']}, score {alert['score']:.2f})" if locale == EN
                       else f"{w('triggered')} {label('alert_type', alert['type'], locale)}（"
                            f"{label('severity', alert['severity'], locale)}，{w('score')} {alert['score']:.2f}）")
            what = (what + sep if what else "") + trigger
        rows.append(row("transaction", ts, event_id, what, f"{event['amount']:.2f}" if event else "",
                        str(event.get("currency", "")) if event else ""))
    for a in case["alert_groups"]:
        for r in a["alert"].get("reasons", []):
            rows.append(row("reason", a["event_ts"], a["alert"]["alert_id"], f"{r.get('code')}: {r.get('text')}",
                            str(r.get("value", ""))))
    for t in reversed(customer.get("timeline", [])):
        rows.append(row("timeline", t["ts"], t["event_id"], t["what"]))
    for e in case["log"]:
        action = w(f"log:{e['action']}").removeprefix("log:")  # a history action, not a status
        what = sep.join([action] + [f"{w(k)} {w(e[k]) if k == 'decision' else e[k]}"
                                    for k in ("decision", "owner", "alert", "text", "proposed_by") if e.get(k)])
        rows.append(row("decision" if e["action"] in ("proposed", "approved", "rejected") else "history",
                        e["at"], case["id"], what, by=e["by"]))
    return rows


def _transaction(event: dict[str, Any], locale: str) -> str:
    """A transaction's direction, type, channel and payee (or payer); in Chinese the words
    around the codes as the timeline has them."""
    if locale == EN:
        return " ".join(str(event[f]) for f in ("direction", "txn_type", "channel", "counterparty_id") if event.get(f))
    w = lambda word: report_word(word, locale)  # noqa: E731
    party = "from" if event.get("direction") == "credit" else "to"
    parts = [w(str(event.get("direction", ""))), str(event.get("txn_type", "")),
             f"{w('via')} {event['channel']}" if event.get("channel") else "",
             f"{w(party)} {event['counterparty_id']}" if event.get("counterparty_id") else ""]
    return " ".join(p for p in parts if p)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_csv(rows: list[dict[str, str]]) -> str:
    """The report as CSV (a header, then ``REPORT_COLUMNS`` per row); cells a spreadsheet
    would take for a formula are quoted with a leading apostrophe."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, REPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "'" + v if v[:1] in ("=", "+", "-", "@") and not _number(v) else v for k, v in r.items()})
    return out.getvalue()


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report_html(case: dict[str, Any], rows: list[dict[str, str]], generated_by: str, generated_at: str,
                locale: str = EN) -> str:
    """The report as a printable page in ``locale`` (every text escaped; the page's own
    stylesheet only)."""
    from html import escape

    w = lambda word: report_word(word, locale)  # noqa: E731
    titles = {"case": "Case", "customer": "Customer", "transaction": "Transactions", "reason": "Reasons",
              "timeline": "Timeline", "decision": "Decisions", "history": "Case history"}
    title = w("Suspicious-transaction report")
    parts = [f"<!doctype html><html lang=\"{escape(locale)}\"><head><meta charset=\"utf-8\">",
             f"<title>{title} {escape(case['id'])}</title>",
             "<link rel=\"stylesheet\" href=\"/static/report.css\"></head><body>",
             f"<h1>{title}</h1><p class=\"meta\">{w('Case')} {escape(case['id'])} · "
             + w("generated {at} by {who}").format(at=escape(generated_at), who=escape(generated_by)) + "</p>"]
    for section, heading in titles.items():
        chosen = [r for r in rows if r["section"] == section]
        if not chosen:
            continue
        parts.append(f"<h2>{w(heading)}</h2><table id=\"report-{section}\"><thead><tr>"
                     + "".join(f"<th>{w(c)}</th>" for c in REPORT_COLUMNS[1:]) + "</tr></thead><tbody>")
        for r in chosen:
            parts.append("<tr>" + "".join(f"<td>{escape(r[c])}</td>" for c in REPORT_COLUMNS[1:]) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)
