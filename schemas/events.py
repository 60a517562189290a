"""Input events: the wire format of CONTRACT.md section 1, parsed into typed objects.

``parse_event(raw)`` turns one message value (bytes) into a ``Transaction``,
``AppEvent``, ``Feedback`` or ``Profile``, or raises ``InvalidEvent`` with a
human-readable reason. The field tables below are the single source of truth:
the parser reads them, and ``json_schema(kind)`` publishes them as JSON Schema
for producers (see ``schemas/jsonschema/``).

Events and the other per-event objects are slotted dataclasses that the engine never
mutates, but they are not ``frozen``: a frozen dataclass's ``__init__`` goes through
``object.__setattr__`` per field and costs five times as much (4.4 us against 0.8 us for
16 fields, measured), and several are built for every event.

>>> ev = parse_event(b'{"kind": "transaction", "event_id": "e1", '
...                  b'"ts": "2026-11-23T09:30:00.125Z", "customer_id": "c1", "amount": 12.5}')
>>> ev.amount, ev.direction, ev.currency, ev.t
(12.5, 'debit', 'CNY', 1795426200.125)
>>> parse_event(b'{"kind": "transaction", "event_id": "e1", "ts": "yesterday", '
...             b'"customer_id": "c1", "amount": 1}')
Traceback (most recent call last):
...
schemas.events.InvalidEvent: field 'ts': not an RFC 3339 timestamp: 'yesterday'
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

SCHEMA_VERSION: Final = "1"

EventKind = Literal["transaction", "app", "feedback", "profile", "control"]


class InvalidEvent(ValueError):
    """An input message that cannot be processed; the message says why."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an input event, as producers must send it."""

    name: str
    type: Literal["string", "number", "integer", "boolean", "object", "enum"]
    required: bool = False
    description: str = ""
    max_length: int = 256
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


ID_MAX: Final = 128

COMMON_FIELDS: Final = (
    FieldSpec("event_id", "string", True, "unique per event; de-duplication and tracing", ID_MAX),
    FieldSpec("ts", "string", True, "event time, RFC 3339 with offset or Z"),
    FieldSpec("customer_id", "string", True, "the key of all per-customer state", ID_MAX),
)

KIND_FIELDS: Final[dict[str, tuple[FieldSpec, ...]]] = {
    "transaction": (
        FieldSpec("amount", "number", True, "amount in `currency`, >= 0", minimum=0),
        FieldSpec("currency", "string", description="ISO 4217, default CNY", max_length=3),
        FieldSpec("direction", "enum", description="debit = money leaves the customer",
                  choices=("debit", "credit")),
        FieldSpec("txn_type", "string", description="card_payment, transfer, cash_deposit, ..."),
        FieldSpec("channel", "string", description="app, web, branch, atm, pos, api, wechat, ..."),
        FieldSpec("account_id", "string", max_length=ID_MAX),
        FieldSpec("counterparty_id", "string", description="payee, merchant or terminal",
                  max_length=ID_MAX),
        FieldSpec("counterparty_country", "string", description="ISO 3166 alpha-2",
                  max_length=2),
        FieldSpec("merchant_category", "string"),
        FieldSpec("device_id", "string", max_length=ID_MAX),
        FieldSpec("product_id", "string", max_length=ID_MAX),
        FieldSpec("balance_after", "number"),
    ),
    "app": (
        FieldSpec("action", "string", True, "login, login_failed, page_view, contact_change, ..."),
        FieldSpec("session_id", "string", max_length=ID_MAX),
        FieldSpec("device_id", "string", max_length=ID_MAX),
        FieldSpec("channel", "string"),
        FieldSpec("product_id", "string", max_length=ID_MAX),
        FieldSpec("ip_country", "string", max_length=2),
        FieldSpec("duration_ms", "integer", minimum=0),
        FieldSpec("properties", "object", description="free-form; never required"),
    ),
    "feedback": (
        FieldSpec("label", "enum", True, "the outcome being reported",
                  choices=("fraud", "legit", "churned", "retained",
                           "nba_accepted", "nba_dismissed", "nba_converted")),
        FieldSpec("ref_event_id", "string", description="the labelled transaction",
                  max_length=ID_MAX),
        FieldSpec("ref_alert_id", "string", max_length=ID_MAX),
        FieldSpec("ref_prompt_id", "string", max_length=ID_MAX),
    ),
    "profile": (
        FieldSpec("rm_id", "string", description="relationship manager", max_length=ID_MAX),
        FieldSpec("segment", "string", description="mass, affluent, private, ..."),
        FieldSpec("risk_level", "integer", description="suitability grade C1..C5",
                  minimum=1, maximum=5),
        FieldSpec("marketing_opt_out", "boolean", description="no algorithmic recommendations"),
        FieldSpec("birth_year", "integer", minimum=1900, maximum=2100),
        FieldSpec("city", "string"),
        FieldSpec("kyc_level", "string"),
        # Optional, for the fairness figures of next-best action (age band from birth_year).
        FieldSpec("gender", "string", description="female, male, ... (fairness figures only)",
                  max_length=32),
        FieldSpec("city_tier", "string", description="the city's tier: 1, 2, 3, 4 (fairness figures only)",
                  max_length=32),
    ),
    # Operator commands that must reach the dataflow in stream order, so that a replay
    # decides what live processing decided (``run.py snooze`` produces them).
    "control": (
        FieldSpec("action", "enum", True, "snooze: suppress alerts of a type until `until`; "
                  "unsnooze: lift it", choices=("snooze", "unsnooze")),
        FieldSpec("alert_type", "string", True, "the alert type, or * for every type"),
        FieldSpec("until", "string", description="RFC 3339; required to snooze"),
        FieldSpec("by", "string", description="who asked (for the audit trail)"),
    ),
}


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class _Common:
    event_id: str
    ts: str  # as received, echoed in outputs
    t: float  # event time, seconds since the Unix epoch
    customer_id: str


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Transaction(_Common):
    amount: float
    currency: str = "CNY"
    direction: Literal["debit", "credit"] = "debit"
    txn_type: str | None = None
    channel: str | None = None
    account_id: str | None = None
    counterparty_id: str | None = None
    counterparty_country: str | None = None
    merchant_category: str | None = None
    device_id: str | None = None
    product_id: str | None = None
    balance_after: float | None = None
    kind: Literal["transaction"] = "transaction"


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class AppEvent(_Common):
    action: str
    session_id: str | None = None
    device_id: str | None = None
    channel: str | None = None
    product_id: str | None = None
    ip_country: str | None = None
    duration_ms: int | None = None
    properties: dict[str, Any] | None = field(default=None, compare=False)
    kind: Literal["app"] = "app"


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Feedback(_Common):
    label: str
    ref_event_id: str | None = None
    ref_alert_id: str | None = None
    ref_prompt_id: str | None = None
    kind: Literal["feedback"] = "feedback"


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Profile(_Common):
    rm_id: str | None = None
    segment: str | None = None
    risk_level: int | None = None
    marketing_opt_out: bool = False
    birth_year: int | None = None
    city: str | None = None
    kyc_level: str | None = None
    gender: str | None = None
    city_tier: str | None = None
    kind: Literal["profile"] = "profile"


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Control(_Common):
    """An operator command for one customer (not a customer event: no detector learns from it)."""

    action: str
    alert_type: str
    until: str | None = None
    by: str | None = None
    until_t: float | None = None
    kind: Literal["control"] = "control"


Event = Transaction | AppEvent | Feedback | Profile | Control

_CLASSES: Final[dict[str, type[Any]]] = {
    "transaction": Transaction, "app": AppEvent, "feedback": Feedback, "profile": Profile,
    "control": Control,
}


@functools.lru_cache(maxsize=4096)
def _midnight(date: str) -> int:
    """Seconds from the epoch to midnight UTC of ``date`` (YYYY-MM-DD); ValueError if invalid."""
    return (datetime.fromisoformat(date).replace(tzinfo=UTC) - _EPOCH).days * 86400


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: str) -> float | None:
    """The common shape ``YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]Z`` without ``datetime`` (the dates
    of a stream repeat, their midnights are cached): the same float as
    ``datetime.fromisoformat(value).timestamp()``; None for any other shape or a field out of
    range (the general parser then decides)."""
    n = len(value)
    if value[-1] != "Z" or n not in (20, 24, 27) or value[13] != ":" or value[16] != ":":
        return None
    fraction = value[20:-1]
    digits = value[11:13] + value[14:16] + value[17:19] + fraction
    if not (digits.isascii() and digits.isdigit() and value[19] == ("." if fraction else "Z")):
        return None
    hour, minute, second = int(value[11:13]), int(value[14:16]), int(value[17:19])
    if not (hour < 24 and minute < 60 and second < 60):
        return None
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    try:
        midnight = _midnight(value[:10])
    except ValueError:
        return None
    return ((midnight + hour * 3600 + minute * 60 + second) * 1_000_000 + micro) / 1_000_000


def parse_timestamp(value: object) -> float:
    """Seconds since the epoch for an RFC 3339 timestamp with an offset or ``Z``.

    >>> parse_timestamp("1970-01-01T00:00:01.5+00:00")
    1.5
    >>> parse_timestamp("2026-11-23T09:30:00.125Z") == datetime.fromisoformat("2026-11-23T09:30:00.125Z").timestamp()
    True
    """
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T":
        fast = _utc(value)
        if fast is not None:
            return fast
    if not isinstance(value, str) or len(value) < 19 or value[10] not in "Tt ":
        raise InvalidEvent(f"field 'ts': not an RFC 3339 timestamp: {value!r}"[:200])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidEvent(f"field 'ts': not an RFC 3339 timestamp: {value!r} ({exc})"[:200]) from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"field 'ts': timestamp has no UTC offset: {value!r}"[:200])
    return parsed.timestamp()


def _check(spec: FieldSpec, value: object) -> object:
    """Return ``value`` if it satisfies ``spec``; raise ``InvalidEvent`` otherwise."""
    kind = spec.type
    if kind == "string" or kind == "enum":
        if not isinstance(value, str):
            raise InvalidEvent(f"field {spec.name!r}: expected a string, got {_json_type(value)}")
        if kind == "enum" and value not in spec.choices:
            raise InvalidEvent(f"field {spec.name!r}: {value[:40]!r} is not one of {', '.join(spec.choices)}")
        if not 0 < len(value) <= spec.max_length:
            raise InvalidEvent(f"field {spec.name!r}: length must be 1..{spec.max_length}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidEvent(f"field {spec.name!r}: expected a boolean, got {_json_type(value)}")
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise InvalidEvent(f"field {spec.name!r}: expected an object, got {_json_type(value)}")
        return value
    # number / integer; bool is an int subclass in Python but not a JSON number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"field {spec.name!r}: expected a {kind}, got {_json_type(value)}")
    if kind == "integer" and not isinstance(value, int):
        raise InvalidEvent(f"field {spec.name!r}: expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise InvalidEvent(f"field {spec.name!r}: not a finite number")
    if spec.minimum is not None and value < spec.minimum:
        raise InvalidEvent(f"field {spec.name!r}: {value!r} is below {spec.minimum:g}")
    if spec.maximum is not None and value > spec.maximum:
        raise InvalidEvent(f"field {spec.name!r}: {value!r} is above {spec.maximum:g}")
    return float(value) if kind == "number" else value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _validated(obj: dict[str, Any], kind: str, specs: tuple[FieldSpec, ...]) -> Event:
    """Check every field against its spec, in table order; the first problem is the reason."""
    values: dict[str, Any] = {}
    for spec in COMMON_FIELDS:
        value = obj.get(spec.name)
        if value is None:
            raise InvalidEvent(f"missing required field {spec.name!r}")
        values[spec.name] = _check(spec, value)
    values["t"] = parse_timestamp(values["ts"])
    for spec in specs:
        value = obj.get(spec.name)
        if value is None:  # absent and JSON null both mean "not given"
            if spec.required:
                raise InvalidEvent(f"missing required field {spec.name!r}")
            continue
        values[spec.name] = _check(spec, value)
    if kind == "control":
        values["until_t"] = _control_until(values)
    result: Event = _CLASSES[kind](**values)
    return result


def _fast_parser(kind: str) -> Any:
    """A function that builds a ``kind`` event from a decoded object whose fields are all
    valid, and returns None at the first field that is not (``_validated`` then finds the
    reason). Generated from the field tables, as ``dataclasses`` generates ``__init__``: one
    inline check per field instead of a loop of calls; the common case costs a third.
    """
    lines = [f"def parse_{kind}(obj):", "    get = obj.get", "    kw = {}"]
    for spec in (*COMMON_FIELDS, *KIND_FIELDS[kind]):
        name = spec.name
        lines.append(f"    v = get({name!r})")
        lines.append("    if v is None:")
        lines.append("        return None" if spec.required else "        pass")
        tests = {
            "string": f"v.__class__ is not str or not 0 < len(v) <= {spec.max_length}",
            "enum": f"v.__class__ is not str or v not in {spec.choices!r}",
            "number": "(v.__class__ is not float and v.__class__ is not int) or not -INF < v < INF",
            "integer": "v.__class__ is not int",
            "boolean": "v.__class__ is not bool",
            "object": "v.__class__ is not dict",
        }[spec.type]
        if spec.minimum is not None:
            tests += f" or v < {spec.minimum!r}"
        if spec.maximum is not None:
            tests += f" or v > {spec.maximum!r}"
        lines.append(f"    elif {tests}:")
        lines.append("        return None")
        lines.append("    else:")
        lines.append(f"        kw[{name!r}] = float(v)" if spec.type == "number" else f"        kw[{name!r}] = v")
    lines.append("    kw['t'] = parse_timestamp(kw['ts'])")
    lines.append("    return cls(**kw)")
    namespace: dict[str, Any] = {"INF": math.inf, "parse_timestamp": parse_timestamp, "cls": _CLASSES[kind]}
    exec("\n".join(lines), namespace)  # the source is built above from the constant tables
    return namespace[f"parse_{kind}"]


# Control events are rare operator commands with a cross-field rule: checked field by field.
_FAST: Final = {kind: _fast_parser(kind) for kind in KIND_FIELDS if kind != "control"}


def event_from_obj(obj: object) -> Event:
    """Validate a decoded JSON value and build the typed event."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {_json_type(obj)}")
    kind = obj.get("kind")
    specs = KIND_FIELDS.get(kind) if isinstance(kind, str) else None
    if specs is None or not isinstance(kind, str):
        if kind is None:
            raise InvalidEvent("missing required field 'kind'")
        raise InvalidEvent(f"unknown kind {str(kind)[:40]!r}; expected one of {', '.join(KIND_FIELDS)}")
    fast = _FAST.get(kind)
    event: Event | None = fast(obj) if fast is not None else None
    return event if event is not None else _validated(obj, kind, specs)


def _control_until(values: dict[str, Any]) -> float | None:
    until = values.get("until")
    if until is None:
        if values["action"] == "snooze":
            raise InvalidEvent("missing required field 'until' (a snooze needs an end)")
        return None
    try:
        return parse_timestamp(until)
    except InvalidEvent as exc:
        raise InvalidEvent(str(exc).replace("field 'ts'", "field 'until'")) from None


def parse_event(raw: bytes | str) -> Event:
    """Parse one message value; raise ``InvalidEvent`` saying why it is unusable."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}") from None
    return event_from_obj(obj)


_JSON_TYPES: Final = {"string": "string", "enum": "string", "number": "number",
                      "integer": "integer", "boolean": "boolean", "object": "object"}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that producers of ``kind`` events can validate against."""
    props: dict[str, Any] = {"kind": {"const": kind}}
    required = ["kind"]
    for spec in (*COMMON_FIELDS, *KIND_FIELDS[kind]):
        json_type = _JSON_TYPES[spec.type]
        # The parser reads an explicit null in an optional field as "not given".
        prop: dict[str, Any] = {"type": json_type if spec.required else [json_type, "null"]}
        if spec.description:
            prop["description"] = spec.description
        if spec.type in ("string", "enum"):
            prop["minLength"], prop["maxLength"] = 1, spec.max_length
        if spec.choices:
            prop["enum"] = [*spec.choices] if spec.required else [*spec.choices, None]
        if spec.minimum is not None:
            prop["minimum"] = spec.minimum
        if spec.maximum is not None:
            prop["maximum"] = spec.maximum
        if spec.name == "ts":
            prop["format"] = "date-time"
        props[spec.name] = prop
        if spec.required:
            required.append(spec.name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"crm-events/{kind}/v{SCHEMA_VERSION}",
        "title": f"{kind} event",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": True,
    }
