"""Encryption of personal data at rest (``schemas.crypto``), against a real Redis and the
real ``cryptography`` library: SM4-GCM and AES-256-GCM envelopes, a live engine whose Redis
keys and values and audit log hold no plaintext personal data from its input, key rotation
(old entries still open, ``run.py keys rotate --reencrypt``), wrong keys that fail naming the
key id, the audit chain that still verifies, and what each dashboard role sees."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import run
from config.settings import ConfigError, Settings, load_settings
from schemas.crypto import CannotDecrypt, PiiKeyError, PiiKeys, Sealer, is_sealed, masked
from schemas.events import parse_event
from schemas.outputs import Alert, EventSummary, Reason, format_ts
from schemas.redis_keys import RedisKeys
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisEventsSink, RedisSink
from tests.dashboard_env import dashboard
from tests.live_engine import engine_settings, inject, live_engine, wait_for
from tests.services import redis_server
from tests.test_audit import verify

# Personal data put into the input (UnionPay card numbers, mainland mobile numbers, a
# resident ID number, a name), and patterns that find any such number in what is stored.
CARD_1, CARD_2 = "6222021234567890123", "6222029876543210987"
PHONE_1, PHONE_2 = "13800138000", "13912345678"
ID_NUMBER = "110101199003071234"
NAME, NAME_ZH = "Zhang San", "张三"
PLAINTEXTS = (CARD_1, CARD_2, PHONE_1, PHONE_2, ID_NUMBER, NAME, NAME_ZH)
#: Numbers standing alone (not inside a decimal, a hex digest or a base64 envelope, where
#: eleven digits in a row are common enough to make a scan fail at random).
_ALONE, _END = r"(?<![\w.\-])", r"(?![\w\-])"
PATTERNS = (re.compile(_ALONE + r"62\d{14,17}" + _END),  # a UnionPay card number
            re.compile(_ALONE + r"1[3-9]\d{9}" + _END),  # a mainland mobile number
            re.compile(_ALONE + r"\d{17}[\dX]" + _END),  # a resident ID number
            re.compile("|".join(map(re.escape, (NAME, NAME_ZH)))))


def pii_found(text: str) -> list[str]:
    """Every plaintext or pattern match of personal data in ``text``."""
    found = [p for p in PLAINTEXTS if p in text]
    found += [m.group(0) for pattern in PATTERNS for m in pattern.finditer(text)]
    return found


def key_file(directory: Path, name: str = "pii-key.toml", key_id: str = "p-test",
             algorithm: str = "sm4-gcm") -> Path:
    path = directory / name
    path.write_text(PiiKeys.generate(key_id, algorithm).to_text())  # type: ignore[arg-type]
    path.chmod(0o600)
    return path


def with_crypto(settings: Settings, keys: Path) -> Settings:
    return replace(settings, crypto=replace(settings.crypto, enabled=True, key_file=str(keys)))


def summary(event: dict[str, Any]) -> EventSummary:
    found = EventSummary.of(parse_event(orjson.dumps(event)))
    assert found is not None
    return found


# -- the envelope ----------------------------------------------------------------------------


def test_the_installed_cryptography_does_sm4_gcm_as_rfc_8998_says() -> None:
    """The pinned wheel's OpenSSL has SM4 in GCM mode: the known answer of RFC 8998, A.1."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plain = bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
                          "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA")
    enc = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    cipher = enc.update(plain) + enc.finalize()
    assert cipher.hex().upper() == ("17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
                                    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D")
    assert enc.tag.hex().upper() == "83DE3541E4C2B58177E065A9BF7B62EC"


@pytest.mark.parametrize("algorithm", ["sm4-gcm", "aes-256-gcm"])
def test_envelopes_round_trip_name_their_key_and_bind_their_field(algorithm: str) -> None:
    sealer = Sealer(PiiKeys.generate("p1", algorithm))  # type: ignore[arg-type]
    record = {"event_id": "e1", "customer_id": "c1", "amount": 1.5, "counterparty_id": CARD_1,
              "properties": {"phone": PHONE_1, "birth_year": 1990, "plan": "gold"}, "device_id": None}
    sealed = sealer.seal_record(record, "e1")
    tag = {"sm4-gcm": "sm4g", "aes-256-gcm": "a256g"}[algorithm]
    assert sealed["counterparty_id"].startswith(f"pii1.{tag}.p1.") and is_sealed(sealed["properties"]["phone"])
    assert is_sealed(sealed["properties"]["birth_year"]) and sealed["properties"]["plan"] == "gold"
    assert sealed["device_id"] is None and sealed["customer_id"] == "c1" and sealed["amount"] == 1.5
    assert not pii_found(orjson.dumps(sealed).decode())
    assert sealer.open_record(sealed) == record
    # deterministic per record (replays de-duplicate), unrelated across records (no linking)
    assert sealer.seal_record(record, "e1") == sealed
    assert sealer.seal_record(record, "e2")["counterparty_id"] != sealed["counterparty_id"]
    assert sealer.seal("x", "v") != sealer.seal("x", "v")  # no context: a random nonce
    # an envelope moved to another field, or altered, does not open
    with pytest.raises(CannotDecrypt, match="field device_id: does not authenticate under key p1"):
        sealer.open("device_id", sealed["counterparty_id"])
    body = sealed["counterparty_id"]
    altered = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
    with pytest.raises(CannotDecrypt, match="under key p1"):
        sealer.open("counterparty_id", altered)
    assert masked(sealed, "***")["counterparty_id"] == "***"


def test_a_wrong_key_fails_naming_the_key_id_never_garbage() -> None:
    sealed = Sealer(PiiKeys.generate("p-old")).seal_record({"counterparty_id": CARD_1}, "e1")
    with pytest.raises(CannotDecrypt, match="sealed with key p-old, which the key file does not hold"):
        Sealer(PiiKeys.generate("p-new")).open_record(sealed)
    impostor = PiiKeys.generate("p-old")  # the same id, other key material
    with pytest.raises(CannotDecrypt, match="does not authenticate under key p-old"):
        Sealer(impostor).open_record(sealed)


def test_key_files_and_settings(tmp_path: Path) -> None:
    with pytest.raises(PiiKeyError, match="key p1 has 3 bytes; 32 are needed"):
        PiiKeys.parse('active = "p1"\n[keys]\np1 = "QUJD"\n')
    with pytest.raises(PiiKeyError, match="algorithm 'des' is not one of"):
        PiiKeys.parse('algorithm = "des"\nactive = "p1"\n[keys]\np1 = "QUJD"\n')
    with pytest.raises(ConfigError, match=r"run\.py keys keygen"):
        load_settings(environ={"CRM__CRYPTO__ENABLED": "true"})
    assert load_settings(environ={}).crypto.sealer() is None  # off by default
    text = PiiKeys.generate("p-env", "aes-256-gcm").to_text()
    s = load_settings(environ={"CRM__CRYPTO__ENABLED": "true", "CRM__CRYPTO__KEYS": text})
    keys = s.crypto.pii_keys()
    assert keys is not None and keys.active == "p-env" and keys.algorithm == "aes-256-gcm"
    assert s.masked()["crypto"]["keys"] == "***" and "p-env" not in repr(s.masked())
    assert base64.b64encode(keys.keys["p-env"]).decode() not in str(s.masked())


def test_keygen_writes_a_private_file_and_rotate_keeps_the_old_keys(tmp_path: Path) -> None:
    out = tmp_path / "keys.toml"
    assert run.main(["keys", "keygen", "--out", str(out), "--id", "p-1"]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert run.main(["keys", "keygen", "--out", str(out)]) == 2  # never overwritten
    sealed = Sealer(PiiKeys.load(out)).seal_record({"device_id": PHONE_1}, "e1")
    assert run.main(["keys", "rotate", "--key-file", str(out), "--id", "p-2", "--algorithm", "aes-256-gcm"]) == 0
    rotated = PiiKeys.load(out)
    assert (rotated.active, rotated.algorithm, sorted(rotated.keys)) == ("p-2", "aes-256-gcm", ["p-1", "p-2"])
    assert out.stat().st_mode & 0o777 == 0o600
    assert Sealer(rotated).open_record(sealed) == {"device_id": PHONE_1}
    assert Sealer(rotated).seal_record({"device_id": PHONE_1}, "e1")["device_id"].startswith("pii1.a256g.p-2.")


# -- the engine, live, with encryption on --------------------------------------------------


def pii_stream(customer: str, rm: str, now: float) -> list[dict[str, Any]]:
    """A profile with personal fields, ordinary payments to a card number from a phone-named
    device, an app event with personal free-form properties, then a takeover (password reset,
    a large transfer to another card from another device): an alert, timelines, an audit."""
    events: list[dict[str, Any]] = [{
        "kind": "profile", "event_id": f"{customer}-p", "ts": format_ts(now - 9 * 86400), "customer_id": customer,
        "rm_id": rm, "segment": "affluent", "risk_level": 3, "name": NAME, "phone": PHONE_1,
        "id_number": ID_NUMBER, "city": "Beijing"}]
    events += [{"kind": "transaction", "event_id": f"{customer}-h{i}", "ts": format_ts(now - (8 - i) * 86400),
                "customer_id": customer, "amount": 120.0 + i, "txn_type": "card_payment", "channel": "pos",
                "counterparty_id": CARD_1, "device_id": PHONE_1, "account_id": ID_NUMBER} for i in range(6)]
    events.append({"kind": "app", "event_id": f"{customer}-chat", "ts": format_ts(now - 3600), "customer_id": customer,
                   "action": "support_chat", "device_id": PHONE_1,
                   "properties": {"name": NAME_ZH, "note": f"call me on {PHONE_2}"}})
    events += [{"kind": "app", "event_id": f"{customer}-reset", "ts": format_ts(now - 600), "customer_id": customer,
                "action": "password_reset", "device_id": PHONE_2},
               {"kind": "transaction", "event_id": f"{customer}-steal", "ts": format_ts(now), "customer_id": customer,
                "amount": 48_000.0, "txn_type": "transfer", "channel": "app", "counterparty_id": CARD_2,
                "device_id": PHONE_2}]
    return events


def everything_in(client: redis.Redis, skip: set[bytes]) -> str:
    """Every key name and every value under any key (strings, hashes, lists, sets, sorted
    sets, streams), as one text, except the keys in ``skip``."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        if key in skip:
            continue
        kind = client.type(key).decode()
        if kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            parts += [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(client.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            parts += [x for _, fields in client.xrange(key) for pair in fields.items() for x in pair]
    return b"\n".join(parts).decode("utf-8", "replace")


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "off"])
def test_live_engine_stores_no_plaintext_personal_data_and_the_audit_chain_verifies(tmp_path: Path,
                                                                                    encrypted: bool) -> None:
    """With encryption off, the same scan finds the payees' card numbers (the scan works)."""
    keys = key_file(tmp_path)
    audit_file = tmp_path / "audit.jsonl"
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)
        base = engine_settings(srv.url, "enc:", tmp_path, audit=True, recent_events=50)
        settings = replace(base, audit=replace(base.audit, file=str(audit_file)))
        settings = with_crypto(settings, keys) if encrypted else settings
        k = RedisKeys("enc:")
        events = pii_stream("c-enc-1", "rm001", time.time())
        with live_engine(settings):
            engine_reading(client, settings)
            inject(client, settings, *events)
            wait_for(lambda: client.xlen(k.alerts()) >= 1, 30, what="the takeover alert")
            wait_for(lambda: client.llen(k.customer_events("c-enc-1")) == len(events) - 1, 30,
                     what="every event but the profile in the timeline")
            wait_for(lambda: audit_file.exists() and audit_file.read_bytes().count(b"\n") >= 1, 30,
                     what="the alert in the audit file")
        # The input stream is what producers wrote (the test, here): not the engine's store.
        stored = everything_in(client, skip={k.input_stream(settings.redis.input_stream).encode()})
        if not encrypted:
            assert {CARD_1, CARD_2} <= set(pii_found(stored))
            return
        assert stored and not pii_found(stored), pii_found(stored)
        audit_text = audit_file.read_text()
        assert not pii_found(audit_text), pii_found(audit_text)
        # ... yet it is all there, sealed, for whoever holds the key
        sealer = Sealer(PiiKeys.load(keys))
        timeline = [sealer.open_record(orjson.loads(raw)) for raw in client.lrange(k.customer_events("c-enc-1"), 0, -1)]
        assert {e.get("counterparty_id") for e in timeline} == {CARD_1, CARD_2, None}
        raw_timeline = client.lrange(k.customer_events("c-enc-1"), 0, -1)
        payees = [e["counterparty_id"] for raw in raw_timeline if "counterparty_id" in (e := orjson.loads(raw))]
        assert len(payees) == 7 and all(p.startswith("pii1.sm4g.p-test.") for p in payees)
        # the audit chain verifies, file and Redis, with encryption on
        code, out = verify("--file", str(audit_file), "--redis", srv.url,
                           "--key", k.audit_log(settings.audit.redis_key), "--key-file", settings.audit.key_file)
        assert code == 0, out


def engine_reading(client: redis.Redis, settings: Settings) -> None:
    """Once the engine reads its input stream (it reads what comes after it started): a
    warm-up event, sent again until it shows in its customer's timeline."""
    timeline = RedisKeys(settings.redis.key_prefix).customer_events("c-warm")
    for i in range(60):
        inject(client, settings, {"kind": "app", "event_id": f"warm-{i}", "ts": format_ts(time.time()),
                                  "customer_id": "c-warm", "action": "login"})
        try:
            wait_for(lambda: client.llen(timeline) > 0, 1.0)
            return
        except AssertionError:
            continue
    raise AssertionError("the engine did not start reading its input stream")


# -- rotation, through the sinks -----------------------------------------------------------


def test_a_rotated_key_reads_old_entries_and_reencrypt_moves_them_to_the_new_key(tmp_path: Path) -> None:
    keys_path = key_file(tmp_path, key_id="p-old")
    k = RedisKeys("rot:")
    now = time.time()
    old_events = [summary({"kind": "transaction", "event_id": f"e{i}", "ts": format_ts(now - 100 + i),
                           "customer_id": "c-rot", "amount": 10.0, "counterparty_id": CARD_1}) for i in range(3)]
    with redis_server(tmp_path) as srv:
        client = redis.Redis.from_url(srv.url)

        def write(sealer: Sealer, items: list[EventSummary]) -> None:
            sink = RedisEventsSink(srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), 20, prefix="rot:",
                                   sealer=sealer)
            sink.open()
            sink.write_batch(list(items))
            sink.close()

        write(Sealer(PiiKeys.load(keys_path)), old_events)
        write(Sealer(PiiKeys.load(keys_path)), old_events)  # a replay: found in the list, not pushed again
        assert client.llen(k.customer_events("c-rot")) == 3
        rotated = PiiKeys.load(keys_path).rotated("p-new")
        keys_path.write_text(rotated.to_text())
        write(Sealer(rotated), [summary({"kind": "transaction", "event_id": "e9", "ts": format_ts(now),
                                         "customer_id": "c-rot", "amount": 10.0, "counterparty_id": CARD_2})])

        def envelopes() -> list[str]:
            return [orjson.loads(raw)["counterparty_id"] for raw in client.lrange(k.customer_events("c-rot"), 0, -1)]

        assert [e.split(".")[2] for e in envelopes()] == ["p-new", "p-old", "p-old", "p-old"]
        assert [Sealer(rotated).open("counterparty_id", e) for e in envelopes()] == [CARD_2] + [CARD_1] * 3
        with pytest.raises(CannotDecrypt, match="key p-old, which the key file does not hold"):
            Sealer(PiiKeys(rotated.active, {"p-new": rotated.keys["p-new"]})).open("counterparty_id", envelopes()[-1])
        # re-encrypt what is stored: a further rotation with --reencrypt
        settings = replace(load_settings(environ={}), redis=replace(load_settings(environ={}).redis, url=srv.url,
                                                                    key_prefix="rot:"))
        parsed = run.build_parser().parse_args(["keys", "rotate", "--key-file", str(keys_path), "--id", "p-3",
                                                "--reencrypt"])
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            assert run._pii_rotate(parsed, settings) == 0, out.getvalue()
        assert "re-encrypted 4 values in 1 keys" in out.getvalue()
        newest = PiiKeys.load(keys_path)
        assert {e.split(".")[2] for e in envelopes()} == {"p-3"}
        only_new = Sealer(PiiKeys("p-3", {"p-3": newest.keys["p-3"]}))
        assert [only_new.open("counterparty_id", e) for e in envelopes()] == [CARD_2] + [CARD_1] * 3
        # the events written again after re-encryption are still found (deterministic envelopes)
        write(Sealer(newest), old_events)
        assert client.llen(k.customer_events("c-rot")) == 4


# -- the dashboard ---------------------------------------------------------------------------


def dash_alerts(now: float) -> list[Alert]:
    ts = format_ts(now - 60)
    return [Alert("al-enc-fraud", "suspicious_transaction", "high", 0.9, "c-enc-0", "rm001", "e-enc-2", ts, ts,
                  (Reason("large_amount", "a large amount", 1.0, 0.5),), "m1", group_key="g-enc-fraud"),
            Alert("al-enc-churn", "churn_risk", "medium", 0.7, "c-enc-0", "rm001", "e-enc-1", ts, ts,
                  (Reason("churn_recency", "silent", 30.0, 1.0),), "m1", group_key="g-enc-churn")]


def dash_events(now: float) -> list[EventSummary]:
    return [summary({"kind": "transaction", "event_id": "e-enc-1", "ts": format_ts(now - 120), "customer_id": "c-enc-0",
                     "amount": 20.0, "txn_type": "transfer", "counterparty_id": CARD_1}),
            summary({"kind": "transaction", "event_id": "e-enc-2", "ts": format_ts(now - 60), "customer_id": "c-enc-0",
                     "amount": 9000.0, "txn_type": "transfer", "counterparty_id": CARD_2}),
            summary({"kind": "feedback", "event_id": "e-enc-3", "ts": format_ts(now - 30), "customer_id": "c-enc-0",
                     "label": "fraud", "ref_event_id": "e-enc-2"})]


@pytest.fixture(scope="module")
def dash_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Settings, Path]]:
    tmp = tmp_path_factory.mktemp("dash-crypto")
    keys = key_file(tmp)
    now = time.time()
    with redis_server(tmp) as srv:
        sealer = Sealer(PiiKeys.load(keys))
        dead = JsonlDeadLetters(tmp / "dead.jsonl")
        for sink in (RedisSink(srv.url, dead, prefix="dcr:", sealer=sealer),
                     RedisEventsSink(srv.url, dead, 20, prefix="dcr:", sealer=sealer)):
            sink.open()
            sink.write_batch([*dash_alerts(now), *dash_events(now)])
            sink.close()
        settings = with_crypto(engine_settings(srv.url, "dcr:", tmp), keys)
        with dashboard(settings, tmp) as dash:
            ana, _ = dash.login("ana")
            wait_for(lambda: len(ana.get("/api/alerts").json()["items"]) == 2, what="both alerts indexed")
            yield dash, settings, tmp


def customer_ref(dash: Any) -> str:
    ana, _ = dash.login("ana")
    return str(ana.get("/api/alerts").json()["items"][0]["cref"])


def events_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return [t["event"] for t in reply["timeline"] if t["kind"] == "event"]


def test_analysts_see_decrypted_payees(dash_world: tuple[Any, Settings, Path]) -> None:
    dash, _, _ = dash_world
    ana, _ = dash.login("ana")
    reply = ana.get(f"/api/customers/{customer_ref(dash)}")
    assert reply.status_code == 200, reply.text
    payees = {e.get("counterparty_id") for e in events_of(reply.json())}
    assert payees == {CARD_1, CARD_2, None} and "pii1." not in reply.text
    assert any(CARD_2 in t["what"] for t in reply.json()["timeline"])  # the texts are made from the opened fields
    ref = next(a["ref"] for a in ana.get("/api/alerts").json()["items"] if a["type"] == "suspicious_transaction")
    detail = ana.get(f"/api/alerts/{ref}")
    assert detail.status_code == 200 and CARD_2 in detail.text and "pii1." not in detail.text


def test_admins_see_masks_and_no_envelope(dash_world: tuple[Any, Settings, Path]) -> None:
    dash, _, _ = dash_world
    root, _ = dash.login("root")
    reply = root.get(f"/api/customers/{customer_ref(dash)}")
    assert reply.status_code == 200, reply.text
    assert {e.get("counterparty_id") for e in events_of(reply.json())} == {"***", None}
    assert not pii_found(reply.text) and "pii1." not in reply.text
    for item in root.get("/api/alerts").json()["items"]:
        detail = root.get(f"/api/alerts/{item['ref']}")
        assert detail.status_code == 200 and not pii_found(detail.text) and "pii1." not in detail.text


def test_rms_see_their_customers_payees_but_no_fraud_data(dash_world: tuple[Any, Settings, Path]) -> None:
    dash, _, _ = dash_world
    cref = customer_ref(dash)
    rm1, _ = dash.login("rm1")
    reply = rm1.get(f"/api/customers/{cref}")
    assert reply.status_code == 200, reply.text
    events = events_of(reply.json())
    assert {e.get("counterparty_id") for e in events} == {CARD_1, CARD_2}  # the fraud label is not shown
    assert all(e.get("label") != "fraud" for e in events) and "fraud_score" not in reply.json()
    assert [a["type"] for a in reply.json()["alerts"]] == ["churn_risk"]
    rm2, _ = dash.login("rm2")
    assert rm2.get(f"/api/customers/{cref}").status_code == 403


def test_a_dashboard_with_the_wrong_key_fails_naming_the_key_id(dash_world: tuple[Any, Settings, Path]) -> None:
    dash, settings, tmp = dash_world
    cref = customer_ref(dash)
    wrong = with_crypto(settings, key_file(tmp, "other-key.toml", key_id="p-other"))
    (tmp / "wrong").mkdir(exist_ok=True)
    with dashboard(wrong, tmp / "wrong") as other:
        ana, _ = other.login("ana")
        reply = ana.get(f"/api/customers/{cref}")
        assert reply.status_code == 500
        assert "sealed with key p-test, which the key file does not hold" in reply.json()["detail"]
        assert not pii_found(reply.text)


def test_the_engine_does_not_start_with_a_key_file_that_does_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRM__CRYPTO__ENABLED", "true")
    monkeypatch.setenv("CRM__CRYPTO__KEY_FILE", str(tmp_path / "missing.toml"))
    assert run.main(["live", "--quiet"]) == 2
    assert "crypto: PII key file not found" in capsys.readouterr().err


# -- the audit log, and Redis Cluster -------------------------------------------------------


def personal_alert(i: int, customer: str = "c-aud") -> Alert:
    """An alert whose reason carries personal fields in its arguments (a rule that names the
    device and the payee): sealed in the audit log like any other personal field."""
    ts = format_ts(time.time() - 60 + i)
    return Alert(f"al-aud-{i}", "account_takeover", "high", 0.9, customer, "rm001", f"e-aud-{i}", ts, ts,
                 (Reason("takeover_sequence", "new payee from a new device", 1.0, 0.6,
                         {"device_id": PHONE_1, "counterparty_id": CARD_1}),), "m1")


def test_audit_records_are_sealed_and_the_chain_verifies(tmp_path: Path) -> None:
    from schemas.audit import AuditKeys
    from sinks.audit import FileAuditSink, RedisAuditSink
    from tests.conftest import audit_key_file

    audit_keys = AuditKeys.load(audit_key_file(tmp_path))
    sealer = Sealer(PiiKeys.load(key_file(tmp_path)))
    path = tmp_path / "audit.jsonl"
    with redis_server(tmp_path) as srv:
        file_sink = FileAuditSink(path, audit_keys, sealer=sealer)
        file_sink.open()
        file_sink.write_batch([personal_alert(i) for i in range(3)])
        file_sink.close()
        redis_sink = RedisAuditSink(srv.url, "aud:{audit}", audit_keys, JsonlDeadLetters(tmp_path / "dead.jsonl"),
                                    sealer=sealer)
        redis_sink.open()
        redis_sink.write_batch([personal_alert(i) for i in range(3)])
        redis_sink.close()
        client = redis.Redis.from_url(srv.url)
        stored = everything_in(client, skip=set())
        assert "pii1.sm4g.p-test." in stored and not pii_found(stored), pii_found(stored)
        assert "pii1.sm4g.p-test." in path.read_text() and not pii_found(path.read_text())
        code, out = verify("--file", str(path), "--redis", srv.url, "--key", "aud:{audit}", "--key-file",
                           str(tmp_path / "audit-key.toml"))
        assert code == 0, out
        entry = orjson.loads(path.read_text().splitlines()[0])
        assert sealer.open_record(entry["record"])["reasons"][0]["args"] == {"device_id": PHONE_1,
                                                                             "counterparty_id": CARD_1}


def test_sealed_sinks_and_reencryption_on_a_redis_cluster(tmp_path: Path) -> None:
    from schemas.redis_url import RedisEndpoint
    from sinks.redis import reseal_stored
    from tests.services import redis_cluster

    keys = PiiKeys.generate("p-c1")
    now = time.time()
    with redis_cluster(tmp_path) as nodes:
        url = RedisEndpoint(nodes.url, cluster=True)
        dead = JsonlDeadLetters(tmp_path / "dead.jsonl")
        customers = [f"c-cl-{i}" for i in range(12)]
        items = [summary({"kind": "transaction", "event_id": f"e-{c}", "ts": format_ts(now), "customer_id": c,
                          "amount": 5.0, "counterparty_id": CARD_1}) for c in customers]
        for sink in (RedisEventsSink(url, dead, 10, prefix="cl:", sealer=Sealer(keys)),
                     RedisSink(url, dead, prefix="cl:", sealer=Sealer(keys))):
            sink.open()
            sink.write_batch([*items, *(personal_alert(i, c) for i, c in enumerate(customers))])
            sink.close()
        rotated = keys.rotated("p-c2")
        values, changed = reseal_stored(url, "cl:", Sealer(rotated))
        # each customer: a timeline entry, and two hash fields holding the alert (last, open)
        assert (values, changed) == (36, 24)
        client = redis.cluster.RedisCluster.from_url(nodes.url)
        k = RedisKeys("cl:")
        only_new = Sealer(PiiKeys("p-c2", {"p-c2": rotated.keys["p-c2"]}))
        for c in customers:
            entry = orjson.loads(client.lindex(k.customer_events(c), 0))
            assert only_new.open_record(entry)["counterparty_id"] == CARD_1
            last = orjson.loads(client.hget(k.customer(c), "last_alert"))
            assert only_new.open_record(last)["reasons"][0]["args"]["device_id"] == PHONE_1
        client.close()
