"""Outputs: alerts, next-best-action prompts, per-event scores, customer state and dead letters
(CONTRACT.md section 2).

Every output is a frozen object with ``to_dict()`` and ``to_bytes()``; ``to_bytes`` is
canonical (fixed field order, no whitespace) so that a replay of the same input gives
byte-identical files.

>>> r = Reason("amount_vs_history", "amount is 8.0x the customer's typical", 8.0, 0.4)
>>> Score("e1", "c1", "2026-11-23T09:30:00Z", 0.25).to_bytes()
b'{"event_id":"e1","customer_id":"c1","ts":"2026-11-23T09:30:00Z","fraud_score":0.25}'
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from schemas.events import SCHEMA_VERSION, AppEvent, Event, Feedback, Transaction
from schemas.snapshots import restore_fields
from schemas.texts import EN, localized_text, render_reason

AlertType = Literal["suspicious_transaction", "account_takeover", "aml_pattern", "churn_risk",
                    "complaint_escalation", "fairness_drift"]
#: The ``customer_id`` of an alert about no one customer (``fairness_drift``, to administrators).
#: A customer may have this id too: such alerts are told apart by their type, never by it.
NO_CUSTOMER: Final = "*"
#: Alert types about a population, not one customer (``customer_id`` is ``NO_CUSTOMER``).
POPULATION_ALERTS: Final = frozenset({"fairness_drift"})
#: Alert types for the customer's relationship manager; the others are the risk team's (and
#: never shown to an RM: no tipping-off). The lifecycle groups each audience's apart.
RM_ALERTS: Final = frozenset({"churn_risk", "complaint_escalation"})
Severity = Literal["low", "medium", "high", "critical"]


def format_ts(t: float) -> str:
    """RFC 3339 UTC with milliseconds, the engine's output format for times.

    >>> format_ts(1795426200.125)
    '2026-11-23T09:30:00.125Z'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class _Record:
    """Canonical JSON for a dataclass output: fields in declaration order, no whitespace."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_bytes(self) -> bytes:
        # orjson writes a dataclass as its fields in declaration order, which is what
        # ``to_dict`` gives, without building the dict (a test checks they agree).
        return orjson.dumps(self)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an alert fired (a rule hit, a feature that drove the model score) or why a prompt
    was made. Beyond the contract's ``{code, text, value, weight}``: ``args``, the values the
    text was rendered from (``schemas.texts``), so that a reader can render it in another
    locale; None for a text that has none.

    >>> r = Reason.of("velocity_burst", 7.0, 0.3, count=7)
    >>> r.text, r.localized("zh-CN").text
    ('7 transactions within one hour', '一小时内 7 笔交易')
    """

    code: str
    text: str
    value: float | str | None
    weight: float
    args: dict[str, Any] | None = field(default=None, compare=False)

    __setstate__ = restore_fields

    @classmethod
    def of(cls, code: str, value: float | str | None, weight: float, **args: Any) -> Reason:
        """Reason ``code`` with its English text rendered from ``args`` by the catalogue."""
        return cls(code, render_reason(code, EN, args), value, weight, args or None)

    def localized(self, locale: str) -> Reason:
        """This reason with its text in ``locale`` (itself for English)."""
        if locale == EN:
            return self
        return replace(self, text=localized_text(self.code, self.text, self.args, locale))


@dataclass(frozen=True, slots=True)
class Alert(_Record):
    """An alert for risk teams or an RM; ``alert_id`` is stable across replays."""

    alert_id: str
    type: AlertType
    severity: Severity
    score: float
    customer_id: str
    rm_id: str | None
    event_id: str
    event_ts: str
    emitted_at: str
    reasons: tuple[Reason, ...]
    model_version: str
    schema_version: str = SCHEMA_VERSION
    # Lifecycle (detectors.lifecycle): "firing" for the first alert of a group, then
    # "grouped" / "escalated" revisions of it; consumers keep the latest per group_key.
    status: str = "firing"
    dedup_key: str | None = None
    group_key: str | None = None
    revision: int = 1

    __setstate__ = restore_fields


def alert_id_for(event_id: str, alert_type: str) -> str:
    """Deterministic alert id: the same trigger always gives the same id.

    >>> alert_id_for("e1", "account_takeover")
    'al-dda21fb349248771cc9aaeb9'
    """
    return _stable_id("al", alert_type, event_id)


def _stable_id(prefix: str, *parts: str) -> str:
    """``prefix-`` and 24 hex digits of a hash of ``parts`` (unit-separated)."""
    return f"{prefix}-{hashlib.blake2b(chr(0x1f).join(parts).encode(), digest_size=12).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Prompt(_Record):
    """A next-best-action prompt for the customer's RM; ``prompt_id`` is stable across replays.

    ``action`` is an id of the action catalogue (``config/actions.toml``), ``product_id`` the
    product it proposes (None for a service action), ``score`` the policy's expected outcome
    in [0, 1] (1 = converts), ``expires_at`` when the prompt stops being valid. Beyond the
    contract: the ``trigger`` type, the triggering ``event_id`` / ``event_ts`` and the action's
    ``title`` in the display locale.

    >>> Prompt("nb-1", "c1", "rm1", "rm_call", None, 0.5, (), "2026-01-01T00:00:00.000Z",
    ...        "nba-linucb-1", "churn_rising", "e1", "2025-12-30T00:00:00Z").to_bytes()[:60]
    b'{"prompt_id":"nb-1","customer_id":"c1","rm_id":"rm1","action'
    """

    prompt_id: str
    customer_id: str
    rm_id: str | None
    action: str
    product_id: str | None
    score: float
    reasons: tuple[Reason, ...]
    expires_at: str
    policy_version: str
    trigger: str
    event_id: str
    event_ts: str
    schema_version: str = SCHEMA_VERSION
    title: str = ""  # what the RM reads: the action's title in the display locale

    __setstate__ = restore_fields


def prompt_id_for(event_id: str, action: str) -> str:
    """Deterministic prompt id from the triggering event and the action chosen.

    >>> prompt_id_for("e1", "rm_call")
    'nb-2d273d82db98f163cbb55223'
    """
    return _stable_id("nb", "nba", action, event_id)


@dataclass(frozen=True, slots=True)
class LifecycleChange(_Record):
    """A change in an alert's lifecycle, for the audit trail: ``snoozed``, ``unsnoozed``,
    ``suppressed`` (by a snooze), ``deduplicated``, ``grouped`` or ``escalated``."""

    change_id: str
    action: str
    customer_id: str
    alert_type: str
    alert_id: str | None  # the trigger this change is about (none for a snooze)
    dedup_key: str | None
    event_id: str  # the triggering event, or the control event
    event_ts: str
    detail: str | None  # the group key, or the end of a snooze
    kind: str = "lifecycle"
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """One fraud model's prequential figures: ROC AUC and average precision of the scores it
    gave the transactions of the last ``labels`` labels (``frauds`` of them fraud), computed
    when the labels arrived; ``None`` where undefined (no fraud, or no legitimate label, yet)."""

    model: str
    version: str
    auc: float | None
    ap: float | None
    labels: int
    frauds: int

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class ModelReport(_Record):
    """The fraud models' evaluation at event time ``as_of``: the ``champion`` (whose score
    decides alerts) and every model's figures over the same labels."""

    report_id: str
    as_of: str
    champion: str
    models: tuple[ModelFigures, ...]
    kind: str = "model_report"
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class ModelChange(_Record):
    """A change of champion fraud model, for the audit trail: ``promoted`` by the engine's
    rule or ``configured`` by an operator; ``models`` are the figures it was decided on."""

    change_id: str
    action: str
    from_model: str
    to_model: str
    to_version: str
    reason: str
    as_of: str
    models: tuple[ModelFigures, ...]
    kind: str = "model_change"
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields


def model_record_id(kind: str, as_of: str, *parts: str) -> str:
    """Stable id of a model report or change: the same replay gives the same ids.

    >>> model_record_id("mr", "2026-01-01T00:00:00.000Z")
    'mr-2026-01-01T00:00:00.000Z'
    """
    return "-".join((kind, as_of, *parts))


@dataclass(frozen=True, slots=True)
class UserAction(_Record):
    """What a dashboard user did, for the audit trail: ``login``, ``logout``,
    ``acknowledge``, ``assign``, ``snooze``, ``close``, ``answer_prompt``; failed sign-ins
    summarised (``login_failed`` for the first of a burst, ``login_locked``) and
    ``login_unlocked``; and what an operator did to a user (``user_changed``,
    ``user_disabled``, ``username`` the operator). ``target`` is the dashboard's ref of the
    alert group, the prompt id or the username concerned; ``event_id`` the feedback or control
    event sent to the engine, if any."""

    action_id: str
    action: str
    username: str
    role: str
    target: str | None
    customer_id: str | None
    detail: str | None
    event_id: str | None
    at: str
    kind: str = "user_action"
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Score(_Record):
    """Per-event scores for an accepted transaction (replay output)."""

    event_id: str
    customer_id: str
    ts: str
    fraud_score: float
    extra: dict[str, float] = field(default_factory=dict)

    __setstate__ = restore_fields

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "customer_id": self.customer_id, "ts": self.ts,
                "fraud_score": self.fraud_score, **self.extra}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())



@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class EventSummary(_Record):
    """A compact copy of one accepted input event for a customer's recent-event timeline
    (Redis ``{prefix}customer:{id}:events``, read by the dashboard): what people look at
    when they review an alert, never the whole event (no devices, accounts, IP countries or
    free-form properties). Fields that do not apply, or were absent, are left out.

    >>> from schemas.events import parse_event
    >>> e = parse_event(b'{"kind":"transaction","event_id":"e1","ts":"2026-11-23T09:30:00Z",'
    ...                 b'"customer_id":"c1","amount":12.5,"channel":"pos","device_id":"d1"}')
    >>> EventSummary.of(e).to_bytes()
    b'{"event_id":"e1","customer_id":"c1","kind":"transaction","ts":"2026-11-23T09:30:00Z","amount":12.5,\
"currency":"CNY","direction":"debit","channel":"pos","schema_version":"1"}'
    """

    event_id: str
    customer_id: str
    kind: str
    ts: str
    amount: float | None = None  # transactions
    currency: str | None = None
    direction: str | None = None
    txn_type: str | None = None
    channel: str | None = None  # transactions and app events
    counterparty_id: str | None = None
    action: str | None = None  # app events
    product_id: str | None = None  # transactions and app events
    label: str | None = None  # feedback
    ref_event_id: str | None = None
    ref_alert_id: str | None = None
    ref_prompt_id: str | None = None
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields

    @classmethod
    def of(cls, event: Event) -> EventSummary | None:
        """The summary of a transaction, app event or feedback; ``None`` for reference data
        (profiles) and the dashboard's own control events, which are not customer activity."""
        if isinstance(event, Transaction):
            return cls(event.event_id, event.customer_id, event.kind, event.ts, amount=event.amount,
                       currency=event.currency, direction=event.direction, txn_type=event.txn_type,
                       channel=event.channel, counterparty_id=event.counterparty_id, product_id=event.product_id)
        if isinstance(event, AppEvent):
            return cls(event.event_id, event.customer_id, event.kind, event.ts, channel=event.channel,
                       action=event.action, product_id=event.product_id)
        if isinstance(event, Feedback):
            return cls(event.event_id, event.customer_id, event.kind, event.ts, label=event.label,
                       ref_event_id=event.ref_event_id, ref_alert_id=event.ref_alert_id,
                       ref_prompt_id=event.ref_prompt_id)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class CustomerState(_Record):
    """The customer view: current scores and a few facts an RM or analyst wants first."""

    customer_id: str
    churn_score: float
    fraud_risk: float
    last_event_ts: str
    as_of: str
    rm_id: str | None = None
    segment: str | None = None
    risk_level: int | None = None
    n_txns: int = 0
    n_app_events: int = 0
    open_alerts: int = 0
    schema_version: str = SCHEMA_VERSION

    __setstate__ = restore_fields


#: The most bytes of a payload a dead letter keeps, by default (``[engine]
#: dead_letter_max_payload_bytes``). Its JSON is then at most 6 x that (every byte of a text
#: payload a ``\u00XX`` escape; base64 is 4/3) plus the other fields: well within Kafka's
#: default message size (1 MB), so the dead letter of any input can be produced.
DEAD_LETTER_MAX_PAYLOAD: Final = 64 * 1024
#: The most characters of a dead letter's reason, and of each text in its source, kept.
DEAD_LETTER_MAX_TEXT: Final = 1024


class TruncatedPayload(ValueError):
    """The dead letter kept only a prefix of the payload; the whole is not there to return."""


def _cut_text(text: str, limit: int = DEAD_LETTER_MAX_TEXT) -> str:
    """``text``, or its first ``limit`` characters and how many more there were.

    >>> _cut_text("abcdef", 4)
    'abcd... [2 more characters]'
    """
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def _utf8_prefix(raw: bytes, limit: int) -> str | None:
    """The longest prefix of ``raw`` of at most ``limit`` bytes that ends on a character
    boundary, as text; ``None`` if that prefix is not UTF-8."""
    cut = limit
    # A UTF-8 character is at most 4 bytes: back over at most 3 continuation bytes (10xxxxxx).
    while cut > 0 and limit - cut < 3 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    try:
        return raw[:cut].decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class DeadLetter(_Record):
    """An input (or a record a sink could not deliver) that was not processed: the payload,
    where it came from and why.

    The payload is kept as text when it is UTF-8, base64 otherwise, and whole when it is at
    most ``max_payload_bytes`` (``of``); beyond that only a prefix of that many bytes is kept
    (cut at a character boundary when it is text) and ``payload_truncated`` is true. Every
    dead letter carries the size in bytes (``payload_size``) and the SHA-256 (hex,
    ``payload_sha256``) of the whole payload as received, to match it with the original
    message. The reason and each text of the source are cut to ``DEAD_LETTER_MAX_TEXT``
    characters.

    >>> small = DeadLetter.of(b'{"kind": "transaction"', "invalid JSON", {"topic": "t", "offset": 7})
    >>> small.payload, small.payload_size, small.payload_truncated, small.raw()
    ('{"kind": "transaction"', 22, False, b'{"kind": "transaction"')
    >>> big = DeadLetter.of("été".encode() * 3, "too long", {}, max_payload_bytes=6)
    >>> big.payload, big.payload_encoding, big.payload_size, big.payload_truncated
    ('été', 'utf-8', 15, True)
    >>> big.payload_sha256 == hashlib.sha256("été".encode() * 3).hexdigest()
    True
    >>> big.raw()
    Traceback (most recent call last):
    ...
    schemas.outputs.TruncatedPayload: the dead letter kept 5 of the payload's 15 bytes
    >>> DeadLetter.of(b"\\xff\\xfe\\x00\\x01", "not UTF-8", {}, max_payload_bytes=2).payload
    '//4='
    """

    reason: str
    source: dict[str, Any]
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    schema_version: str = SCHEMA_VERSION
    # Beyond the first version (additive): the whole payload's size and hash, and whether
    # ``payload`` is only its prefix. Built without them, a whole payload's are computed.
    payload_size: int = -1
    payload_sha256: str = ""
    payload_truncated: bool = False

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        if self.payload_size >= 0 and self.payload_sha256:
            return
        if self.payload_truncated:
            raise ValueError("a dead letter with a truncated payload needs its payload_size and payload_sha256")
        raw = self.kept()
        object.__setattr__(self, "payload_size", len(raw))
        object.__setattr__(self, "payload_sha256", hashlib.sha256(raw).hexdigest())

    @classmethod
    def of(cls, raw: bytes, reason: str, source: dict[str, Any],
           max_payload_bytes: int | None = DEAD_LETTER_MAX_PAYLOAD) -> DeadLetter:
        """The dead letter of ``raw``: whole if it is at most ``max_payload_bytes`` long (or
        that is None, for the engine's own records, which are bounded by construction), else
        a prefix of that many bytes; as text when that is UTF-8, base64 otherwise."""
        reason = _cut_text(reason)
        source = {k: _cut_text(v) if isinstance(v, str) else v for k, v in source.items()}
        size, digest = len(raw), hashlib.sha256(raw).hexdigest()
        if max_payload_bytes is None or size <= max_payload_bytes:
            try:
                return cls(reason, source, raw.decode("utf-8"), "utf-8", payload_size=size, payload_sha256=digest)
            except UnicodeDecodeError:
                return cls(reason, source, base64.b64encode(raw).decode("ascii"), "base64",
                           payload_size=size, payload_sha256=digest)
        text = _utf8_prefix(raw, max_payload_bytes)
        if text is not None:
            return cls(reason, source, text, "utf-8", payload_size=size, payload_sha256=digest,
                       payload_truncated=True)
        return cls(reason, source, base64.b64encode(raw[:max_payload_bytes]).decode("ascii"), "base64",
                   payload_size=size, payload_sha256=digest, payload_truncated=True)

    def amended(self, note: str) -> DeadLetter:
        """This dead letter with ``note`` added to its reason (still cut to the bound).

        >>> DeadLetter.of(b"x", "buffer full", {}).amended("topic t refused it").reason
        'buffer full; topic t refused it'
        """
        return replace(self, reason=_cut_text(f"{self.reason}; {note}"))

    def kept(self) -> bytes:
        """The payload bytes this dead letter holds: all of them, or the prefix kept."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    def raw(self) -> bytes:
        """The payload exactly as received; ``TruncatedPayload`` if only a prefix was kept."""
        kept = self.kept()
        if self.payload_truncated:
            raise TruncatedPayload(f"the dead letter kept {len(kept)} of the payload's {self.payload_size} bytes")
        return kept
