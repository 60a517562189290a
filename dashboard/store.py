"""The dashboard's data in Redis: an index of the engine's alerts and prompts, the actions
on them, the feedback they send to the engine, and the audit of every action.

Every key comes from ``schemas.redis_keys`` (the layout the engine's sinks share; ids are
percent-encoded in keys). The engine writes alerts to ``{prefix}alerts`` (every revision of
every alert group) and prompts to ``{prefix}rm:{rm_id}:prompts``. ``Indexer`` follows those
streams (its positions in ``{prefix}dash:cursors``, so a restart neither skips nor repeats)
and keeps, under ``{prefix}dash:``:

- ``a:{ref}``: one hash per alert group (latest revision, workflow status, assignee), where
  ``ref`` is a keyed hash of the group key: URLs and pages name alerts and customers by refs,
  never by customer ids (which are personal data and would end up in access logs);
- sorted sets by event time (ms) for the queue and its filters: ``idx:all``, ``idx:active``
  (not closed), ``idx:status:{s}``, ``idx:type:{t}``, ``idx:sev:{s}``, ``idx:rm:{rm}``,
  ``cust:{customer}`` (a customer's alert groups), ``scores`` (alert score per group);
- ``p:{prompt_id}`` and ``pq:{rm}`` / ``pa:{rm}`` (an RM's prompts waiting for an answer,
  and accepted ones that may still convert), ``rmstat:{rm}`` (prompts, accepted, dismissed,
  converted), ``owner:{customer}`` (the customer's RM) and ``cref:{ref}`` (ref -> customer).

With ``[redis] recent_events``, the engine also keeps each customer's latest input events
(summaries, newest first) in ``{prefix}customer:{id}:events``; a customer's timeline merges
them with the customer's alert groups and prompts.

A filtered page is a ``ZINTERSTORE`` of the filter's sets (cached 2 s) and a ``ZREVRANGE``:
its cost grows with the size of the sets, not with the page number; see the README's
figures for 10,000 open alerts.

Actions write feedback events (``fraud`` / ``legit`` labels on the alert's transaction,
``nba_*`` answers to prompts) and ``control`` events (snoozes) to the engine's input stream
``{prefix}{feedback_stream}``, in the input contract, validated by ``schemas.events``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from redis.exceptions import WatchError

from schemas.audit import REDIS_APPEND_ONCE, Appender, AuditKeys, BrokenLog, redis_keys
from schemas.events import event_from_obj
from schemas.events import parse_timestamp as parse_ts
from schemas.outputs import UserAction, format_ts
from schemas.redis_keys import LAYOUT_VERSION, RedisKeys
from schemas.texts import EN, ZH_CN, format_money, label

STATUSES: Final = ("open", "acknowledged", "assigned", "snoozed", "closed_fraud", "closed_legit")
ACTIVE: Final = ("open", "acknowledged", "assigned", "snoozed")
CLOSED: Final = ("closed_fraud", "closed_legit")
PROMPT_MOVES: Final = {"new": ("accepted", "dismissed"), "accepted": ("converted", "dismissed")}
ALERT_TYPES: Final = ("suspicious_transaction", "account_takeover", "aml_pattern", "churn_risk",
                      "complaint_escalation", "fairness_drift")
SEVERITIES: Final = ("low", "medium", "high", "critical")
ANSWERS: Final = {"accepted": "nba_accepted", "dismissed": "nba_dismissed", "converted": "nba_converted"}
FRAUD_LABELS: Final = ("fraud", "legit")  # feedback that is fraud data (never shown to RMs)
TIMELINE_MAX: Final = 100  # items in a customer's timeline
RECENT_EVENTS_MAX: Final = 50  # of which at most this many raw events


_EVENT_WORDS: Final = {
    ZH_CN: {"transaction": "交易", "app": "App 操作", "feedback": "反馈", "profile": "客户资料", "control": "操作指令",
            "debit": "支出", "credit": "收入", "product": "产品", "via": "渠道", "to": "收款方", "from": "付款方",
            "alert": "关于告警", "prompt": "关于建议", "event": "关于事件"},
}


def describe_event(event: dict[str, Any], locale: str = EN) -> str:
    """One line about an event summary (``schemas.outputs.EventSummary`` as JSON) for a
    timeline, in ``locale``.

    >>> e = {"kind": "transaction", "amount": 48000.0, "currency": "CNY", "direction": "debit",
    ...      "txn_type": "transfer", "channel": "app", "counterparty_id": "p-1"}
    >>> describe_event(e)
    'transaction debit 48,000.00 CNY transfer via app to p-1'
    >>> describe_event(e, "zh-CN")
    '交易 支出 ¥48,000.00 transfer 渠道 app 收款方 p-1'
    >>> describe_event({"kind": "feedback", "label": "nba_accepted", "ref_prompt_id": "nb-1"})
    'feedback nba_accepted on prompt nb-1'
    """
    words = _EVENT_WORDS.get(locale, {})
    word = lambda w: words.get(w, w)  # noqa: E731
    kind = str(event.get("kind", "event"))
    parts = [word(kind)]
    if kind == "transaction":
        amount, currency = float(event.get("amount", 0.0)), str(event.get("currency", ""))
        parts.append(word(str(event.get("direction", ""))))
        parts += [format_money(amount, currency, locale)] if locale != EN else [f"{amount:,.2f}", currency]
        parts += [str(event["txn_type"])] if event.get("txn_type") else []
    elif kind == "app":
        parts.append(str(event.get("action", "")))
    elif kind == "feedback":
        parts.append(str(event.get("label", "")))
    if event.get("product_id"):
        parts.append(f"{word('product')} {event['product_id']}")
    if event.get("channel"):
        parts.append(f"{word('via')} {event['channel']}")
    if event.get("counterparty_id"):
        parts.append(f"{word('from' if event.get('direction') == 'credit' else 'to')} {event['counterparty_id']}")
    for ref, name in (("ref_alert_id", "alert"), ("ref_prompt_id", "prompt"), ("ref_event_id", "event")):
        if event.get(ref):
            parts.append(f"{words[name]} {event[ref]}" if name in words else f"on {name} {event[ref]}")
            break
    return " ".join(p for p in parts if p)


def describe_item(item: dict[str, Any], locale: str = EN) -> str:
    """One line about a timeline item (an alert, a prompt or an event) in ``locale``.

    >>> describe_item({"kind": "alert", "alert_type": "aml_pattern", "severity": "high", "score": 0.9,
    ...                "status": "open"}, "zh-CN")
    '反洗钱可疑模式（高，评分 0.90），状态：待处理'
    """
    if item["kind"] == "event":
        return describe_event(item["event"], locale)
    if item["kind"] == "prompt":
        if locale == EN:
            return f"prompt {item['action']} ({item['status']})"
        return f"{label('field', 'prompt', locale)} {item['action']}（{label('status', item['status'], locale)}）"
    kind, severity = item["alert_type"], item["severity"]
    if locale == EN:
        return f"{kind} ({severity}, score {item['score']:.2f}), status {item['status']}"
    return (f"{label('alert_type', kind, locale)}（{label('severity', severity, locale)}，"
            f"{label('field', 'score', locale)} {item['score']:.2f}），状态：{label('status', item['status'], locale)}")


def _ms(ts: str) -> int:
    return int(parse_ts(ts) * 1000)


@dataclass(frozen=True)
class Page:
    """One page of a filtered list and the size of the whole list."""

    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


class NotFound(LookupError):
    """No such alert, prompt or customer."""


class Store:
    """Reads and writes the dashboard's keys; every method is one or two round trips."""

    def __init__(self, client: Any, prefix: str, feedback_stream: str, feedback_time: str = "wall",
                 audit_key: str = "audit", locale: str = EN) -> None:
        self.r = client  # a redis.asyncio.Redis
        self.locale = locale  # of the timelines' lines (schemas.texts)
        self.k = RedisKeys(prefix)
        self.feedback_key = self.k.input_stream(feedback_stream)
        self.feedback_time = feedback_time
        self.audit_key = self.k.audit_log(audit_key)
        self._ref_key = b""
        self._change_status = client.register_script(_CHANGE_STATUS)
        self._answer = client.register_script(_ANSWER)
        self._cache_page = client.register_script(_CACHE_PAGE)

    async def start(self) -> None:
        """Check the Redis key layout (the first writer sets it) and load (or create once)
        the key that refs are hashed with."""
        await self.r.set(self.k.layout(), LAYOUT_VERSION, nx=True)
        layout = (await self.r.get(self.k.layout()) or b"").decode()
        if layout != LAYOUT_VERSION:
            raise RuntimeError(f"the Redis keys under {self.k.prefix!r} follow key layout {layout}, this dashboard "
                               f"reads layout {LAYOUT_VERSION} (see the README's Redis key layout)")
        await self.r.set(self.k.ref_key(), secrets.token_hex(32), nx=True)
        self._ref_key = await self.r.get(self.k.ref_key())

    def ref(self, kind: str, value: str) -> str:
        """An opaque, stable reference to an alert group or a customer (keyed: it cannot be
        inverted by hashing guessed customer ids without the key)."""
        return kind + hmac.new(self._ref_key, f"{kind}|{value}".encode(), hashlib.sha256).hexdigest()[:20]

    # -- indexing ------------------------------------------------------------------------

    async def index_alert(self, alert: dict[str, Any]) -> dict[str, Any] | None:
        """Record one alert revision; the summary if it changed the group, else None. The
        group is read and written under ``WATCH``, so an action that changes its status
        meanwhile is never undone."""
        group = alert.get("group_key") or alert.get("dedup_key") or alert["alert_id"]
        ref = self.ref("a", group)
        key = self.k.alert(ref)
        revision = int(alert.get("revision") or 1)
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = await pipe.hmget(key, "revision", "status", "severity")
                    if current[0] is not None and int(current[0]) >= revision:
                        return None
                    pipe.multi()
                    self._index_alert(pipe, alert, ref, current)
                    await pipe.execute()
                    break
                except WatchError:
                    continue  # an action changed the group: read it again
        return await self.alert_summary(ref)

    def _index_alert(self, pipe: Any, alert: dict[str, Any], ref: str, current: list[bytes | None]) -> None:
        customer, rm = alert["customer_id"], alert.get("rm_id") or ""
        cref = self.ref("c", customer)
        ts = _ms(alert["event_ts"])
        status = current[1].decode() if current[1] else "open"
        key = self.k.alert(ref)
        pipe.hset(key, mapping={"revision": int(alert.get("revision") or 1), "alert": orjson.dumps(alert),
                                "status": status, "severity": alert["severity"], "type": alert["type"],
                                "customer": customer, "cref": cref, "rm": rm, "ts": ts, "score": alert["score"]})
        if current[0] is None:
            pipe.hset(key, "first_ts", ts)
        if current[2] is not None and current[2].decode() != alert["severity"]:
            pipe.zrem(self.k.queue_by("sev", current[2].decode()), ref)
        for idx in (self.k.queue("all"), self.k.queue_by("type", alert["type"]),
                    self.k.queue_by("sev", alert["severity"]), self.k.queue_by("status", status)):
            pipe.zadd(idx, {ref: ts})
        if status in ACTIVE:
            pipe.zadd(self.k.queue("active"), {ref: ts})
        if rm:
            pipe.zadd(self.k.queue_by("rm", rm), {ref: ts})
            pipe.set(self.k.owner(customer), rm)
        pipe.zadd(self.k.customer_alerts(customer), {ref: ts})
        pipe.set(self.k.customer_ref(cref), customer)
        pipe.zadd(self.k.scores(), {ref: float(alert["score"])})
        pipe.hincrby(self.k.volume(), str(ts // 3_600_000), 1 if current[0] is None else 0)

    async def index_prompt(self, prompt: dict[str, Any]) -> dict[str, Any] | None:
        """Record one prompt (once); its summary if new."""
        pid, rm, customer = prompt["prompt_id"], prompt.get("rm_id") or "", prompt["customer_id"]
        if not rm or not await self.r.set(self.k.prompt(pid), orjson.dumps({**prompt, "status": "new"}), nx=True):
            return None
        cref = self.ref("c", customer)
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.k.rm_queue(rm), {pid: _ms(prompt["event_ts"])})
        pipe.set(self.k.owner(customer), rm)
        pipe.set(self.k.customer_ref(cref), customer)
        pipe.zadd(self.k.customer_prompts(customer), {pid: _ms(prompt["event_ts"])})
        pipe.hincrby(self.k.rm_stats(rm), "prompts", 1)
        await pipe.execute()
        return {**prompt, "status": "new", "cref": cref}

    # -- reading -------------------------------------------------------------------------

    async def alert_summary(self, ref: str) -> dict[str, Any]:
        data = await self.r.hgetall(self.k.alert(ref))
        if not data:
            raise NotFound(ref)
        return self._summary(ref, data)

    async def alerts(self, status: str | None, alert_type: str | None, severity: str | None,
                     rm: str | None, offset: int, limit: int) -> Page:
        """A page of alert groups, newest first, matching every filter given."""
        sets = [self.k.queue("active") if status in (None, "active") else
                self.k.queue("all") if status == "all" else self.k.queue_by("status", status)]
        if alert_type:
            sets.append(self.k.queue_by("type", alert_type))
        if severity:
            sets.append(self.k.queue_by("sev", severity))
        if rm:
            sets.append(self.k.queue_by("rm", rm))
        key = sets[0]
        if len(sets) > 1:
            key = self.k.queue_cache(hashlib.sha1("|".join(sets).encode()).hexdigest())
            if not await self.r.exists(key):
                await self._cache_page(keys=[key, *sets], args=[2000])
        rows, total = await self.newest(key, offset, limit, self.k.alert)
        return Page([self._summary(ref, row) for ref, row in rows], total, offset, limit)

    async def newest(self, index: str, offset: int, limit: int, hash_key: Callable[[str], str]
                     ) -> tuple[list[tuple[str, dict[bytes, bytes]]], int]:
        """A page of the sorted set ``index``, highest score first: each member's hash (at
        ``hash_key(member)``; members whose hash is gone are left out) and the set's size."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(index)
        pipe.zrevrange(index, offset, offset + limit - 1)
        total, members = await pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(hash_key(member.decode()))
        rows = await pipe.execute()
        return [(m.decode(), row) for m, row in zip(members, rows, strict=True) if row], int(total)

    @staticmethod
    def _summary(ref: str, data: dict[bytes, bytes]) -> dict[str, Any]:
        alert = orjson.loads(data[b"alert"])
        return {"ref": ref, "status": data[b"status"].decode(), "assignee": data.get(b"assignee", b"").decode(),
                "cref": data[b"cref"].decode(), "customer_id": data[b"customer"].decode(),
                "rm_id": data[b"rm"].decode(), "type": alert["type"], "severity": alert["severity"],
                "score": alert["score"], "event_ts": alert["event_ts"], "revision": alert.get("revision", 1),
                "alert": alert}

    async def owner(self, customer: str) -> str | None:
        value = await self.r.get(self.k.owner(customer))
        return value.decode() if value else None

    async def customer_of(self, cref: str) -> str:
        value = await self.r.get(self.k.customer_ref(cref))
        if value is None:
            raise NotFound(cref)
        return str(value.decode())

    async def customer(self, customer: str, reveal: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """Scores from the engine's customer hash, and the timeline, newest first (at most
        ``TIMELINE_MAX`` items): alert groups (their latest revision's trigger), prompts and
        the customer's recent input events (``kind`` ``event``, the summary under ``event``).
        ``reveal`` turns what was stored sealed into what the reader may see (opened or
        masked, ``schemas.crypto``) before the timeline's texts are made from it."""
        reveal = reveal or (lambda value: value)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.k.customer(customer))
        pipe.zrevrange(self.k.customer_alerts(customer), 0, 49)
        pipe.zrevrange(self.k.customer_prompts(customer), 0, 49)
        pipe.get(self.k.owner(customer))
        pipe.lrange(self.k.customer_events(customer), 0, RECENT_EVENTS_MAX - 1)
        engine, refs, pids, owner, recent = await pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for ref in refs:
            pipe.hgetall(self.k.alert(ref.decode()))
        for pid in pids:
            pipe.get(self.k.prompt(pid.decode()))
        rows = await pipe.execute()
        alerts = [reveal(self._summary(ref.decode(), row))
                  for ref, row in zip(refs, rows[:len(refs)], strict=True) if row]
        prompts = [reveal(orjson.loads(raw)) for raw in rows[len(refs):] if raw]
        timeline = [{"ts": a["event_ts"], "kind": "alert", "ref": a["ref"], "event_id": a["alert"]["event_id"],
                     "alert_type": a["type"], "severity": a["severity"], "score": a["score"], "status": a["status"]}
                    for a in alerts]
        timeline += [{"ts": p["event_ts"], "kind": "prompt", "ref": p["prompt_id"], "event_id": p["event_id"],
                      "alert_type": "", "action": p["action"], "status": p["status"]} for p in prompts]
        events = [reveal(orjson.loads(raw)) for raw in recent]
        timeline += [{"ts": e["ts"], "kind": "event", "ref": "", "event_id": e["event_id"], "alert_type": "",
                      "event": e} for e in events]
        for item in timeline:
            item["what"] = describe_item(item, self.locale)
        # By event time (offsets differ between producers, so not as strings); at one instant
        # an alert or prompt above the event that triggered it; events keep the list's order.
        timeline.sort(key=lambda item: (_ms(item["ts"]), item["kind"] != "event"), reverse=True)
        del timeline[TIMELINE_MAX:]

        def num(field: bytes) -> float | None:
            return float(engine[field]) if field in engine else None
        return {"customer_id": customer, "cref": self.ref("c", customer), "rm_id": owner.decode() if owner else "",
                "fraud_score": num(b"fraud_score"), "churn_score": num(b"churn_score"),
                "fraud_risk": num(b"fraud_risk"), "open_groups": sum(1 for k in engine if k.startswith(b"open:")),
                "alerts": alerts, "prompts": prompts, "timeline": timeline}

    async def prompts(self, rm: str, which: str, offset: int, limit: int) -> Page:
        """An RM's prompts waiting for an answer (``new``) or accepted (``accepted``)."""
        key = self.k.rm_queue(rm) if which == "new" else self.k.rm_accepted(rm)
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(key)
        pipe.zrevrange(key, offset, offset + limit - 1)
        total, pids = await pipe.execute()
        raws = await self.r.mget([self.k.prompt(pid.decode()) for pid in pids]) if pids else []
        items = [{**orjson.loads(raw), "cref": self.ref("c", orjson.loads(raw)["customer_id"])} for raw in raws if raw]
        return Page(items, int(total), offset, limit)

    async def prompt(self, pid: str) -> dict[str, Any]:
        return (await self.prompt_stored(pid))[0]

    async def prompt_stored(self, pid: str) -> tuple[dict[str, Any], bytes]:
        """The prompt and its stored bytes (what an answer is conditional on)."""
        raw = await self.r.get(self.k.prompt(pid))
        if raw is None:
            raise NotFound(pid)
        return dict(orjson.loads(raw)), bytes(raw)

    async def stats(self, rm: str | None) -> dict[str, Any]:
        """Alert volume per hour of event time (the last 48 hours with alerts), the score
        distribution of all alert groups (10 bins), and conversion per RM."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.k.volume())
        for i in range(10):
            pipe.zcount(self.k.scores(), i / 10, f"({(i + 1) / 10}" if i < 9 else 1.0)
        if rm:
            pipe.hgetall(self.k.rm_stats(rm))
        out = await pipe.execute()
        volume = sorted((int(k), int(v)) for k, v in out[0].items())[-48:]
        result: dict[str, Any] = {
            "volume": [{"hour": format_ts(h * 3600.0), "alerts": n} for h, n in volume],
            "scores": [{"from": i / 10, "to": (i + 1) / 10, "alerts": int(n)} for i, n in enumerate(out[1:11])]}
        if rm:
            stat = {k.decode(): int(v) for k, v in out[11].items()}
            prompts = stat.get("prompts", 0)
            result["rm"] = {**{k: stat.get(k, 0) for k in ("prompts", "accepted", "dismissed", "converted")},
                            "conversion_rate": stat.get("converted", 0) / prompts if prompts else 0.0}
        return result

    async def models(self) -> dict[str, Any]:
        """The fraud models' latest report (each model's prequential AUC and AP, the champion)
        and the latest change of champion, as the engine wrote them (None before the first)."""
        stored = await self.r.hgetall(self.k.models())
        return {name: orjson.loads(stored[name.encode()]) if name.encode() in stored else None
                for name in ("report", "change")}

    # -- actions -------------------------------------------------------------------------
    #
    # An action reads the state, decides (``alert_verdict``, ``prompt_verdict``), builds the
    # event it sends (validated, not sent yet) and then applies the change and adds the event
    # to the engine's input in one script, only if the state is still the one it read. Two
    # concurrent closes: one applies and sends its label; the other finds the group closed,
    # reads it again and is a repeat that sends nothing.

    async def change_status(self, summary: dict[str, Any], status: str, assignee: str | None,
                            event: dict[str, Any] | None) -> bool:
        """Move the alert group from the status and assignee in ``summary`` to ``status``
        (and ``assignee``) and add ``event`` to the engine's input, atomically; False (and
        nothing done) if the group is no longer as ``summary`` says."""
        ref, old = summary["ref"], summary["status"]
        done = await self._change_status(
            keys=[self.k.alert(ref), self.k.queue_by("status", old), self.k.queue_by("status", status),
                  self.k.queue("active"), self.feedback_key],
            args=[old, summary["assignee"], status, assignee or "", ref, "1" if status in ACTIVE else "0",
                  orjson.dumps(event) if event is not None else ""])
        if done == -1:
            raise NotFound(ref)
        return bool(done)

    async def answer(self, pid: str, answer: str, event: dict[str, Any], stored: bytes) -> dict[str, Any] | None:
        """Move a prompt on (``new`` -> accepted / dismissed, accepted -> converted) and add
        ``event`` to the engine's input, atomically; None (and nothing done) if the prompt is
        no longer ``stored``."""
        prompt = orjson.loads(stored)
        rm = prompt["rm_id"]
        updated = {**prompt, "status": answer}
        done = await self._answer(
            keys=[self.k.prompt(pid), self.k.rm_queue(rm), self.k.rm_accepted(rm), self.k.rm_stats(rm),
                  self.feedback_key],
            args=[stored, orjson.dumps(updated), pid, answer, _ms(prompt["event_ts"]), orjson.dumps(event)])
        return dict(updated) if done else None

    def _event_ts(self, reference_ts: str) -> str:
        return reference_ts if self.feedback_time == "reference" else format_ts(time.time())

    @staticmethod
    def _valid(event: dict[str, Any]) -> dict[str, Any]:
        """``event`` without its empty fields, validated against the input contract."""
        clean = {k: v for k, v in event.items() if v is not None}
        event_from_obj(clean)  # raises InvalidEvent: a bug here, never sent
        return clean

    def feedback_event(self, customer: str, label: str, reference_ts: str, ref_event_id: str | None = None,
                       ref_alert_id: str | None = None, ref_prompt_id: str | None = None) -> dict[str, Any]:
        return self._valid({
            "kind": "feedback", "event_id": f"fb-{uuid.uuid4().hex}", "ts": self._event_ts(reference_ts),
            "customer_id": customer, "label": label, "ref_event_id": ref_event_id, "ref_alert_id": ref_alert_id,
            "ref_prompt_id": ref_prompt_id})

    def snooze_event(self, customer: str, alert_type: str, hours: float, reference_ts: str,
                     by: str) -> dict[str, Any]:
        ts = self._event_ts(reference_ts)
        until = format_ts(parse_ts(ts) + hours * 3600.0)
        return self._valid({
            "kind": "control", "event_id": f"ctl-{uuid.uuid4().hex}", "ts": ts, "customer_id": customer,
            "action": "snooze", "alert_type": alert_type, "until": until, "by": by})


Verdict = Literal["apply", "repeat", "conflict"]


def alert_verdict(status: str, assignee: str, target: str, new_assignee: str | None = None) -> Verdict:
    """What an action that moves an alert group in ``status`` to ``target`` does: ``apply``,
    ``repeat`` (the group is already so: nothing to do, nothing sent) or ``conflict`` (a
    closed group takes no other action).

    >>> alert_verdict("open", "", "closed_fraud"), alert_verdict("closed_fraud", "", "closed_fraud")
    ('apply', 'repeat')
    >>> alert_verdict("closed_fraud", "", "snoozed"), alert_verdict("closed_legit", "", "closed_fraud")
    ('conflict', 'conflict')
    >>> alert_verdict("assigned", "ana", "assigned", "ana"), alert_verdict("assigned", "ana", "assigned", "bob")
    ('repeat', 'apply')
    """
    if status == target and (new_assignee is None or new_assignee == assignee):
        return "repeat"
    return "conflict" if status in CLOSED else "apply"


def prompt_verdict(status: str, answer: str) -> Verdict:
    """What an answer to a prompt in ``status`` does.

    >>> prompt_verdict("new", "accepted"), prompt_verdict("accepted", "accepted")
    ('apply', 'repeat')
    >>> prompt_verdict("dismissed", "accepted"), prompt_verdict("new", "converted")
    ('conflict', 'conflict')
    """
    if status == answer:
        return "repeat"
    return "apply" if answer in PROMPT_MOVES.get(status, ()) else "conflict"


# KEYS: 1 the cached page, 2.. the filter's sets. ARGV: 1 how long it is cached (ms).
# (A script, not a MULTI: redis-py's asyncio cluster transactions cannot route ZINTERSTORE.)
_CACHE_PAGE = """
local command = {'ZINTERSTORE', KEYS[1], #KEYS - 1}
for i = 2, #KEYS do
  command[#command + 1] = KEYS[i]
end
command[#command + 1] = 'AGGREGATE'
command[#command + 1] = 'MAX'
redis.call(unpack(command))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: 1 the alert group, 2 its status set now, 3 the new status set, 4 the active set,
#       5 the engine's input stream
# ARGV: 1 the status read, 2 the assignee read, 3 the new status, 4 the new assignee ("" keeps
#       it), 5 ref, 6 "1" if the new status is active, 7 the event to send ("" for none)
_CHANGE_STATUS = """
local current = redis.call('HMGET', KEYS[1], 'status', 'assignee', 'ts')
if not current[1] then
  return -1
end
if current[1] ~= ARGV[1] or (current[2] or '') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'assignee', ARGV[4])
end
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], current[3], ARGV[5])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[4], current[3], ARGV[5])
else
  redis.call('ZREM', KEYS[4], ARGV[5])
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[5], '*', 'data', ARGV[7])
end
return 1
"""

# KEYS: 1 the prompt, 2 the RM's queue, 3 the RM's accepted prompts, 4 the RM's counts,
#       5 the engine's input stream
# ARGV: 1 the prompt as read, 2 the prompt answered, 3 prompt id, 4 the answer, 5 its event
#       time (ms), 6 the event to send
_ANSWER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[4] == 'accepted' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
else
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('XADD', KEYS[5], '*', 'data', ARGV[6])
return 1
"""


#: How often a user's action tries to append to the audit log before the request fails: in
#: a burst of the engine's alerts, an action that re-reads the head at once can lose race
#: after race; random pauses of up to 50 ms (about 1.5 s in all) let it in between them.
APPEND_ATTEMPTS: Final = 40


class Auditor:
    """Appends users' actions to the engine's signed, chained audit list: the format, the
    key file's active key and the append-once script of ``schemas.audit``, as the engine's
    writer uses them, so both chain into one log in one order. A log that does not verify
    (a head not signed, or gone back) is refused with ``schemas.audit.BrokenLog``."""

    def __init__(self, client: Any, key: str, keys: AuditKeys) -> None:
        self.r, self.key = client, key
        self._appender = Appender(keys, f"Redis key {key}")
        self._script = client.register_script(REDIS_APPEND_ONCE)
        # One append at a time from this process: the appender remembers the last head it
        # wrote, and an action that read the head before another one's append landed would
        # take its own stale read for a log gone back.
        self._one_at_a_time = asyncio.Lock()

    async def record(self, action: str, username: str, role: str, target: str | None = None,
                     customer_id: str | None = None, detail: str | None = None,
                     event_id: str | None = None) -> None:
        record = UserAction(f"ua-{uuid.uuid4().hex}", action, username, role, target, customer_id, detail,
                            event_id, format_ts(time.time()))
        async with self._one_at_a_time:
            await self._append(record)

    async def _append(self, record: UserAction) -> None:
        keys = redis_keys(self.key)
        for attempt in range(APPEND_ATTEMPTS):  # another writer moved the head: re-read and re-link
            if attempt:  # after a random pause, so as not to lose every race to the engine's burst
                await asyncio.sleep(random.uniform(0.0, min(0.05, 0.001 * 2 ** attempt)))
            stored = await self.r.get(keys[1])
            entry, head = self._appender.next(stored, record.kind, record.action_id, orjson.loads(record.to_bytes()))
            result = await self._script(keys=keys, args=self._appender.script_args(entry, stored, head))
            if result == -2:
                raise BrokenLog(f"audit log {self.key}: the list's length does not agree with its signed head")
            if result == 1:
                self._appender.appended(head)
            if result != -1:
                return
        raise ConnectionError(f"audit log {self.key}: head kept moving")

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in reversed(await self.r.lrange(self.key, -limit, -1))]
