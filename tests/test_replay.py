"""Replay through the real dataflow: determinism, worker counts, dead letters, state."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, replay


def test_replay_twice_is_byte_identical(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    first = replay(events, tmp_path / "one")
    second = replay(events, tmp_path / "two")
    assert first.records("alerts"), "the simulated typologies must raise alerts"
    for name in ("alerts", "scores", "state", "dead_letters"):
        assert first.raw(name) == second.raw(name), name


def test_two_workers_give_the_same_alerts_and_scores(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    one = replay(events, tmp_path / "w1", workers=1)
    two = replay(events, tmp_path / "w2", workers=2)
    assert sorted(one.raw("alerts").splitlines()) == sorted(two.raw("alerts").splitlines())
    assert sorted(one.raw("scores").splitlines()) == sorted(two.raw("scores").splitlines())
    assert sorted(one.raw("state").splitlines()) == sorted(two.raw("state").splitlines())


def test_every_transaction_is_scored_and_every_customer_has_state(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    result = replay(events, tmp_path / "out")
    sent = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    txn_ids = {e["event_id"] for e in sent if e["kind"] == "transaction"}
    scores = result.records("scores")
    assert {s["event_id"] for s in scores} == txn_ids and len(scores) == len(txn_ids)
    assert all(0.0 <= s["fraud_score"] <= 1.0 for s in scores)
    states = result.records("state")
    watermark = max(e["ts"] for e in sent)
    assert {s["customer_id"] for s in states} == {e["customer_id"] for e in sent}
    assert all(0 <= s["churn_score"] <= 1 and 0 <= s["fraud_risk"] <= 1 for s in states)
    assert {s["as_of"][:19] for s in states} == {watermark[:19]}
    alerts = result.records("alerts")
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    for alert in alerts:
        assert alert["reasons"] and alert["type"] in {
            "suspicious_transaction", "account_takeover", "aml_pattern"}
        assert alert["event_id"] in txn_ids and alert["emitted_at"][:19] == alert["event_ts"][:19]


def _malformed(rng: random.Random, good: list[bytes]) -> bytes:
    """One bad line of a random sort."""
    base = orjson.loads(rng.choice(good))
    sort = rng.randrange(8)
    if sort == 0:
        return b'{"kind": "transaction", "amount": '  # truncated JSON
    if sort == 1:
        base.pop(rng.choice(["event_id", "ts", "customer_id", "kind"]))
        return orjson.dumps(base)
    if sort == 2:
        base["customer_id"] = rng.choice([12, None, True, ["c"], ""])
        return orjson.dumps(base)
    if sort == 3:
        return orjson.dumps(base).replace(b'"ts":', b'"amount":NaN,"ts":', 1) if base["kind"] == "transaction" \
            else b'{"kind":"transaction","event_id":"x","ts":"2026-01-01T00:00:00Z","customer_id":"c","amount":NaN}'
    if sort == 4:
        base["ts"] = rng.choice(["2026-13-01T00:00:00Z", "yesterday", "2026-01-01T25:00:00Z", "2026-01-01"])
        return orjson.dumps(base)
    if sort == 5:
        base["kind"] = rng.choice(["trade", "TRANSACTION", "", "login"])
        return orjson.dumps(base)
    if sort == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b"\xff"
    return b"\xff\xfe" + orjson.dumps(base)  # not UTF-8


def test_ten_thousand_malformed_lines_go_to_dead_letters(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    good = [line for line in events.read_bytes().splitlines() if line]
    rng = random.Random(5)
    bad = [_malformed(rng, good) for _ in range(10_000)]
    bad = [b for b in bad if b.strip() and b"\n" not in b and b"\r" not in b]
    mixed = [(line, True) for line in good] + [(line, False) for line in bad]
    rng.shuffle(mixed)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in mixed) + b"\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "run.py", "replay", "--input", str(path), "--alerts-out", str(out / "a.jsonl"),
         "--scores-out", str(out / "s.jsonl"), "--dead-letter-out", str(out / "d.jsonl")],
        cwd=ROOT, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    dead = [orjson.loads(line) for line in (out / "d.jsonl").read_bytes().splitlines()]
    assert len(bad) >= 9_000 and len(dead) == len(bad)
    lines = {i + 1: line for i, (line, _) in enumerate(mixed)}
    for letter in dead:
        assert letter["reason"] and letter["source"]["file"] == str(path)
        raw = letter["payload"].encode() if letter["payload_encoding"] == "utf-8" \
            else __import__("base64").b64decode(letter["payload"])
        assert raw == lines[letter["source"]["line"]]
    scored = {orjson.loads(line)["event_id"] for line in (out / "s.jsonl").read_bytes().splitlines()}
    valid_txns = {orjson.loads(line)["event_id"] for line in good if b'"kind":"transaction"' in line}
    assert scored == valid_txns


def test_replay_of_a_gzipped_file_matches_the_plain_one(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    import gzip

    events, _ = sim_stream
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(events.read_bytes()))
    plain = replay(events, tmp_path / "plain")
    zipped = replay(packed, tmp_path / "zipped")
    assert plain.raw("alerts") == zipped.raw("alerts") and plain.raw("scores") == zipped.raw("scores")


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["live", "--help"],
                                  ["simulate", "--help"], ["evaluate", "--help"]])
def test_every_command_documents_its_options(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "run.py", *argv], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"usage:" in proc.stdout
