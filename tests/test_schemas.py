"""The input contract (CONTRACT.md section 1): what is accepted, what is rejected and why."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import (
    _FAST,
    KIND_FIELDS,
    AppEvent,
    Feedback,
    InvalidEvent,
    Profile,
    Transaction,
    _validated,
    json_schema,
    parse_event,
)
from schemas.outputs import DEAD_LETTER_MAX_TEXT, DeadLetter, TruncatedPayload

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "jsonschema"
BASE = {"event_id": "e1", "ts": "2026-11-23T09:30:00.125Z", "customer_id": "c1"}


def encode(**fields: object) -> bytes:
    return orjson.dumps({**BASE, **fields})


def test_each_kind_parses_to_its_type_with_defaults() -> None:
    txn = parse_event(encode(kind="transaction", amount=10))
    assert isinstance(txn, Transaction)
    assert (txn.amount, txn.currency, txn.direction) == (10.0, "CNY", "debit")
    assert isinstance(parse_event(encode(kind="app", action="login")), AppEvent)
    assert isinstance(parse_event(encode(kind="feedback", label="fraud", ref_event_id="x")), Feedback)
    profile = parse_event(encode(kind="profile", risk_level=4, marketing_opt_out=True))
    assert isinstance(profile, Profile) and profile.risk_level == 4 and profile.marketing_opt_out


def test_timestamps_with_offsets_are_event_time() -> None:
    utc = parse_event(encode(kind="app", action="login", ts="2026-11-23T01:30:00Z"))
    beijing = parse_event(encode(kind="app", action="login", ts="2026-11-23T09:30:00+08:00"))
    assert utc.t == beijing.t


def test_unknown_fields_are_accepted_and_null_optionals_mean_absent() -> None:
    txn = parse_event(encode(kind="transaction", amount=1, channel=None, extra={"x": 1}))
    assert isinstance(txn, Transaction) and txn.channel is None


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"kind": "transaction", "amount": NaN}', "invalid JSON"),
    (b'{"kind": "transaction", "amount": 1e999}', "invalid JSON"),
    (b"\xff\xfe garbage", "invalid JSON"),
    (encode(kind="wire", amount=1), "unknown kind 'wire'"),
    (orjson.dumps({"event_id": "e", "ts": BASE["ts"], "customer_id": "c"}), "missing required field 'kind'"),
    (encode(kind="transaction"), "missing required field 'amount'"),
    (encode(kind="transaction", amount="12"), "field 'amount': expected a number, got string"),
    (encode(kind="transaction", amount=True), "field 'amount': expected a number, got boolean"),
    (encode(kind="transaction", amount=-1), "field 'amount': -1 is below 0"),
    (encode(kind="transaction", amount=1, direction="sideways"), "field 'direction'"),
    (encode(kind="transaction", amount=1, ts="2026-11-23T09:30:00"), "has no UTC offset"),
    (encode(kind="transaction", amount=1, ts="2026-02-30T09:30:00Z"), "not an RFC 3339 timestamp"),
    (encode(kind="transaction", amount=1, ts=1700000000), "field 'ts': expected a string, got integer"),
    (encode(kind="transaction", amount=1, customer_id=""), "field 'customer_id': length must be 1..128"),
    (encode(kind="transaction", amount=1, customer_id="x" * 129), "length must be 1..128"),
    (encode(kind="app"), "missing required field 'action'"),
    (encode(kind="app", action="login", duration_ms=1.5), "expected an integer"),
    (encode(kind="feedback", label="maybe"), "field 'label'"),
    (encode(kind="profile", risk_level=6), "field 'risk_level': 6 is above 5"),
    (encode(kind="profile", marketing_opt_out="no"), "expected a boolean"),
])
def test_invalid_input_is_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=None) as info:
        parse_event(raw)
    assert reason in str(info.value)


def test_dead_letter_keeps_the_payload_exactly() -> None:
    for raw in (b"not json \xe4\xb8\xad", b"\xff\x00binary"):
        letter = DeadLetter.of(raw, "why", {"topic": "t", "partition": 0, "offset": 7})
        assert letter.raw() == raw
        back = orjson.loads(letter.to_bytes())
        assert back["reason"] == "why" and back["source"]["offset"] == 7
    assert DeadLetter.of(b"\xff", "r", {}).payload_encoding == "base64"


def test_dead_letter_carries_the_size_and_hash_of_every_payload() -> None:
    raw = b'{"kind": "transaction", "amount": NaN}'
    back = orjson.loads(DeadLetter.of(raw, "why", {}).to_bytes())
    assert back["payload_size"] == len(raw) and back["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert back["payload_truncated"] is False and back["schema_version"] == "1"
    # a dead letter written before these fields existed gets them from its (whole) payload
    old = {"reason": "r", "source": {"file": "f", "line": 3}, "payload": "x\u00e9", "payload_encoding": "utf-8",
           "schema_version": "1"}
    letter = DeadLetter(**old)  # type: ignore[arg-type]
    assert (letter.payload_size, letter.payload_sha256) == (3, hashlib.sha256("x\u00e9".encode()).hexdigest())
    with pytest.raises(ValueError, match="needs its payload_size"):
        DeadLetter("r", {}, "abc", "utf-8", payload_truncated=True)


@pytest.mark.parametrize("char", ["a", "\u00e9", "\u4e2d", "\U0001f600"])  # 1, 2, 3 and 4 bytes in UTF-8
def test_a_truncated_text_payload_ends_on_a_character_boundary(char: str) -> None:
    raw = (char * 50).encode()
    width = len(char.encode())
    for limit in range(0, len(raw)):
        letter = DeadLetter.of(raw, "too long", {}, max_payload_bytes=limit)
        assert letter.payload_truncated and letter.payload_encoding == "utf-8"
        assert letter.payload == char * (limit // width)
        assert (letter.payload_size, letter.payload_sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert not DeadLetter.of(raw, "fits", {}, max_payload_bytes=len(raw)).payload_truncated


def test_a_truncated_binary_payload_is_a_base64_prefix() -> None:
    raw = b"\xff\xfe" + bytes(range(256)) * 40
    letter = DeadLetter.of(raw, "not UTF-8", {"topic": "t"}, max_payload_bytes=1000)
    assert letter.payload_encoding == "base64" and letter.payload_truncated
    assert base64.b64decode(letter.payload) == letter.kept() == raw[:1000]
    assert letter.payload_size == len(raw) and letter.payload_sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(TruncatedPayload, match="kept 1000 of the payload's 10242 bytes"):
        letter.raw()
    # text up to the cut but not after it: the prefix kept is text
    mixed = b"x" * 2000 + b"\xff"
    assert DeadLetter.of(mixed, "r", {}, max_payload_bytes=1000).payload == "x" * 1000
    # a bound of 0 keeps only the size and the hash
    empty = DeadLetter.of(mixed, "r", {}, max_payload_bytes=0)
    assert (empty.payload, empty.payload_size, empty.payload_truncated) == ("", 2001, True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=40).map(str.encode), st.integers(0, 70))
def test_a_dead_letter_keeps_a_prefix_within_the_bound_and_reads_back(raw: bytes, limit: int) -> None:
    letter = DeadLetter.of(raw, "r", {"line": 1}, max_payload_bytes=limit)
    kept = letter.kept()
    assert (raw.startswith(kept) and len(kept) <= limit) or kept == raw
    assert letter.payload_truncated == (len(raw) > limit)
    if not letter.payload_truncated:
        assert letter.raw() == raw
    elif letter.payload_encoding == "base64":
        assert kept == raw[:limit]
    else:
        assert len(kept) > limit - 4  # at most a partial character was left out
    assert DeadLetter(**orjson.loads(letter.to_bytes())) == letter


def test_dead_letter_reason_and_source_are_bounded() -> None:
    letter = DeadLetter.of(b"x", "because " * 1000, {"file": "/" + "d/" * 2000, "line": 12})
    assert len(letter.reason) < DEAD_LETTER_MAX_TEXT + 40 and letter.reason.endswith("more characters]")
    assert letter.reason.startswith("because because")
    assert len(letter.source["file"]) < DEAD_LETTER_MAX_TEXT + 40 and letter.source["line"] == 12


def test_the_largest_dead_letter_fits_a_default_kafka_message() -> None:
    """The default bound with the worst payloads: control characters (each a 6-byte JSON
    escape) and binary (base64), and the longest reason and source."""
    long_text = "\u4e2d" * 5000
    for raw in (bytes(range(32)) * 10_000, b"\xff" * 1_000_000):
        letter = DeadLetter.of(raw, long_text, {"file": long_text, "line": 1})
        assert len(letter.to_bytes()) < 1_000_000


@pytest.mark.parametrize("kind", sorted(KIND_FIELDS))
def test_published_json_schemas_are_current(kind: str) -> None:
    published = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    assert published == json_schema(kind), "run `python -m schemas.publish` and commit the result"


@pytest.mark.parametrize("kind", sorted(KIND_FIELDS))
def test_json_schema_requires_what_the_parser_requires(kind: str) -> None:
    schema = json_schema(kind)
    required = {spec.name for spec in KIND_FIELDS[kind] if spec.required} | {"kind", *BASE}
    assert set(schema["required"]) == required


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=3), st.sampled_from(["debit", "credit", "fraud", "login", "x" * 129]),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(_FAST)), st.data())
def test_fast_path_agrees_with_the_field_by_field_validation(kind: str, data: st.DataObject) -> None:
    """The generated per-kind parser builds exactly what the checks build, or defers to them."""
    obj: dict[str, object] = {**BASE, "kind": kind}
    for spec in KIND_FIELDS[kind]:
        if data.draw(st.booleans()):
            obj[spec.name] = data.draw(_VALUES)
    if data.draw(st.booleans()):
        obj[data.draw(st.sampled_from(sorted(BASE)))] = data.draw(_VALUES)
    try:
        expected: object = _validated(obj, kind, KIND_FIELDS[kind])
    except InvalidEvent as exc:
        expected = str(exc)
    try:
        fast = _FAST[kind](obj)
    except InvalidEvent as exc:
        fast = str(exc)
    assert fast is None or fast == expected


def test_every_output_serialises_as_its_dict() -> None:
    """``to_bytes`` lets orjson write the dataclass directly; it must give exactly
    ``to_dict``'s canonical JSON, nested reasons and optional fields included."""
    from schemas.outputs import Alert, CustomerState, EventSummary, LifecycleChange, Prompt, Reason, Score

    reasons = (Reason("large_amount", "amount 3 is large", 3.0, 0.5), Reason("t", "viewed", "f1", 1.0))
    records = [
        Alert("al-1", "suspicious_transaction", "high", 0.9, "c1", None, "e1", "2026-01-05T11:56:33.860Z",
              "2026-01-05T11:56:34.000Z", reasons, "m1", status="grouped", dedup_key="c1:x:1",
              group_key="c1:al-0", revision=2),
        Prompt("nb-1", "c1", "rm1", "rm_call", None, 0.25, reasons, "2026-01-06T00:00:00.000Z",
               "nba-linucb-1", "large_credit", "e2", "2026-01-05T00:00:00.000Z"),
        CustomerState("c1", 0.5, 0.1, "2026-01-05T00:00:00.000Z", "2026-01-06T00:00:00.000Z",
                      rm_id="rm1", open_alerts=2),
        LifecycleChange("lc-1", "snoozed", "c1", "*", None, None, "e3", "2026-01-05T00:00:00.000Z", None),
        DeadLetter.of(b"\xff{not json", "invalid UTF-8", {"topic": "t", "partition": 0, "offset": 7}),
        Score("e1", "c1", "2026-01-05T00:00:00.000Z", 0.5, {"model_score": 0.25}),
        EventSummary("e1", "c1", "transaction", "2026-01-05T00:00:00.000Z", amount=1.0, currency="CNY"),
    ]
    for record in records:
        assert record.to_bytes() == orjson.dumps(record.to_dict()), type(record).__name__
