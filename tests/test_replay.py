"""Replay through the real dataflow: determinism, worker counts, dead letters, state."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from config.settings import load_settings
from schemas.outputs import DeadLetter
from tests.conftest import ROOT, malformed_line, replay


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
    sent_ids = {e["event_id"] for e in sent}
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
            "suspicious_transaction", "account_takeover", "aml_pattern", "churn_risk", "complaint_escalation"}
        rm_alert = alert["type"] in ("churn_risk", "complaint_escalation")  # on any event of the customer's
        assert alert["event_id"] in (sent_ids if rm_alert else txn_ids)
        assert alert["emitted_at"][:19] == alert["event_ts"][:19]


def test_ten_thousand_malformed_lines_go_to_dead_letters(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    good = [line for line in events.read_bytes().splitlines() if line]
    rng = random.Random(5)
    bad = [malformed_line(rng, good) for _ in range(10_000)]
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
    assert len(dead) == len(bad) == 10_000
    lines = {i + 1: line for i, (line, _) in enumerate(mixed)}
    for letter in dead:
        assert letter["reason"] and letter["source"]["file"] == str(path)
        raw = DeadLetter(**letter).raw()
        assert raw == lines[letter["source"]["line"]]
    scored = {orjson.loads(line)["event_id"] for line in (out / "s.jsonl").read_bytes().splitlines()}
    valid_txns = {orjson.loads(line)["event_id"] for line in good if b'"kind":"transaction"' in line}
    assert scored == valid_txns


def test_oversized_malformed_lines_leave_bounded_dead_letters_and_replays_stay_identical(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """Bad lines far longer than ``[input] dead_letter_max_payload_bytes`` (set to 1,000):
    each dead letter keeps a 1,000-byte prefix with the line's size and SHA-256, every valid
    transaction is scored, and two replays are byte-identical."""
    events, _ = sim_stream
    good = [line for line in events.read_bytes().splitlines() if line]
    rng = random.Random(8)
    bad = [b"\xff" + rng.randbytes(300_000).replace(b"\n", b"").replace(b"\r", b""),
           ("\u4e2d" * 100_000).encode(), b'{"kind": "transaction", "note": "' + b"x" * 200_000]
    lines = list(good)
    for line in bad:
        lines.insert(rng.randrange(len(lines) + 1), line)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    defaults = load_settings()
    settings = replace(defaults, input=replace(defaults.input, dead_letter_max_payload_bytes=1000))
    first = replay(path, tmp_path / "one", settings)
    second = replay(path, tmp_path / "two", settings)
    for name in ("alerts", "scores", "state", "dead_letters", "prompts"):
        assert first.raw(name) == second.raw(name), name
    letters = {letter["source"]["line"]: letter for letter in first.records("dead_letters")}
    assert len(letters) == len(bad)
    for number, letter in letters.items():
        original = lines[number - 1]
        assert letter["payload_truncated"] and letter["payload_size"] == len(original)
        assert letter["payload_sha256"] == hashlib.sha256(original).hexdigest()
        assert original.startswith(DeadLetter(**letter).kept()) and 996 < len(DeadLetter(**letter).kept()) <= 1000
    scored = {record["event_id"] for record in first.records("scores")}
    assert scored == {orjson.loads(line)["event_id"] for line in good if b'"kind":"transaction"' in line}


def test_replay_of_a_gzipped_file_matches_the_plain_one(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    import gzip

    events, _ = sim_stream
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(events.read_bytes()))
    plain = replay(events, tmp_path / "plain")
    zipped = replay(packed, tmp_path / "zipped")
    assert plain.raw("alerts") == zipped.raw("alerts") and plain.raw("scores") == zipped.raw("scores")


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["live", "--help"],
                                  ["simulate", "--help"], ["evaluate", "--help"], ["produce", "--help"]])
def test_every_command_documents_its_options(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "run.py", *argv], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"usage:" in proc.stdout


@pytest.mark.parametrize("before", [True, False])
def test_common_options_count_before_the_subcommand_as_after_it(tmp_path: Path, before: bool) -> None:
    """``--config`` given before the subcommand is read (here: a file with an unknown key is
    refused), and ``--log-level`` takes only a level."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[fraud]\nno_such_key = 1\n")
    options, command = ["--config", str(bad)], ["replay", "--input", str(tmp_path / "none.jsonl")]
    argv = [*options, *command] if before else [*command, *options]
    proc = subprocess.run([sys.executable, "run.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "configuration error" in proc.stderr and "no_such_key" in proc.stderr
    level = ["--log-level", "LOUD"]
    proc = subprocess.run([sys.executable, "run.py", *([*level, *command] if before else [*command, *level])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'LOUD'" in proc.stderr


def test_version() -> None:
    proc = subprocess.run([sys.executable, "run.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["run.py", "0.1.0"]


def test_replay_with_recovery_snapshots_gives_the_same_results(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    from config.settings import load_settings

    events, _ = sim_stream
    plain = replay(events, tmp_path / "plain")
    settings = load_settings(environ={"CRM__ENGINE__RECOVERY_DIR": str(tmp_path / "recovery"),
                                      "CRM__ENGINE__EPOCH_INTERVAL_S": "0.05"})
    recovered = replay(events, tmp_path / "recovered", settings)
    assert list((tmp_path / "recovery").glob("part-*.sqlite3")), "recovery partitions were not created"
    for name in ("alerts", "scores", "state"):
        assert plain.raw(name) == recovered.raw(name), name


def test_a_tick_learned_in_slices_replays_identically_on_one_worker_or_two(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    """Where a big tick's learning is cut into slices depends on event time and the stream
    alone (not on batches or workers), so replay stays deterministic."""
    events, _ = sim_stream
    settings = load_settings(environ={"CRM__FRAUD__TICK_SLICE_ITEMS": "5"})
    one = replay(events, tmp_path / "w1", settings, workers=1)
    two = replay(events, tmp_path / "w2", settings, workers=2)
    for name in ("alerts", "scores", "state"):
        assert sorted(one.raw(name).splitlines()) == sorted(two.raw(name).splitlines()), name
    at_once = replay(events, tmp_path / "at_once", load_settings(environ={"CRM__FRAUD__TICK_SLICE_ITEMS": "0"}))
    assert one.raw("scores") != at_once.raw("scores")  # the slices were learned later in the tick


def test_two_processes_give_the_same_alerts_as_one(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.brokers import free_port

    events, _ = sim_stream
    single = replay(events, tmp_path / "single")
    addresses = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    out = tmp_path / "cluster"
    procs = [subprocess.Popen(
        [sys.executable, "run.py", "replay", "--input", str(events), "--alerts-out", str(out / "alerts.jsonl"),
         "--scores-out", str(out / "scores.jsonl")],
        cwd=ROOT, env={**os.environ, "CRM__ENGINE__ADDRESSES": addresses,
                       "CRM__ENGINE__PROCESS_ID": str(i)}, stderr=subprocess.PIPE) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert sorted((out / "alerts.jsonl").read_bytes().splitlines()) == sorted(single.raw("alerts").splitlines())
    assert sorted((out / "scores.jsonl").read_bytes().splitlines()) == sorted(single.raw("scores").splitlines())


def test_a_customer_known_only_from_a_profile_has_a_state_and_every_output_exists(tmp_path: Path) -> None:
    """A profile is an event of the contract: its customer gets a final state (the replay
    once ended with an AssertionError), and every output asked for is created, empty if
    nothing went there (no alert, no dead letter here)."""
    path = tmp_path / "profiles.jsonl"
    path.write_bytes(orjson.dumps({"kind": "profile", "event_id": "p1", "customer_id": "quiet",
                                   "ts": "2026-03-01T00:00:00Z", "rm_id": "rm1", "risk_level": 2}) + b"\n"
                     + orjson.dumps({"kind": "transaction", "event_id": "t1", "customer_id": "busy",
                                     "ts": "2026-03-02T00:00:00Z", "amount": 10.0}) + b"\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "run.py", "replay", "--input", str(path), "--alerts-out", str(out / "a.jsonl"),
         "--scores-out", str(out / "s.jsonl"), "--state-out", str(out / "t.jsonl"),
         "--dead-letter-out", str(out / "d.jsonl"), "--prompts-out", str(out / "p.jsonl")],
        cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    for name in ("a", "d", "p"):
        assert (out / f"{name}.jsonl").read_bytes() == b""
    states = {s["customer_id"]: s for s in map(orjson.loads, (out / "t.jsonl").read_bytes().splitlines())}
    assert states["quiet"]["last_event_ts"] == "2026-03-01T00:00:00.000Z" and states["quiet"]["rm_id"] == "rm1"
    assert states["busy"]["n_txns"] == 1
