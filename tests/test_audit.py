"""The hash-chained audit log: intact logs verify; any single edit, removal or swap is
found and the first bad entry named, in a file and in Redis (through ``run.py audit verify``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from sinks.audit import FileAuditSink, RedisAuditSink, canonical, verify_file
from sinks.delivery import JsonlDeadLetters
from tests.conftest import ROOT
from tests.services import redis_server, wait_until
from tests.test_delivery import make_alerts


def verify(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "run.py", "audit", "verify", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def written_log(path: Path, n: int = 12) -> list[bytes]:
    sink = FileAuditSink(path)
    sink.open()
    alerts = make_alerts(n)
    sink.write_batch(alerts[:5])
    sink.write_batch(alerts[5:])
    sink.close()
    return path.read_bytes().splitlines()


def edit(line: bytes, rehash: bool = False) -> bytes:
    entry = orjson.loads(line)
    entry["record"]["severity"] = "low"
    if rehash:
        import hashlib

        entry["hash"] = hashlib.sha256(canonical(entry)).hexdigest()
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


TAMPERS = {
    "edited": (lambda lines: [*lines[:4], edit(lines[4]), *lines[5:]], "entry 4 (id al-00004)", "edited"),
    "edited_and_rehashed": (lambda lines: [*lines[:4], edit(lines[4], True), *lines[5:]],
                            "entry 5 (id al-00005)", "does not link"),
    "deleted": (lambda lines: lines[:6] + lines[7:], "entry 6 (id al-00007)", "removed"),
    "swapped": (lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]], "entry 2 (id al-00003)", "reordered"),
    "last_deleted": (lambda lines: lines[:-1], "ends at entry 10", "removed from the end"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_file_log_tampering_is_found(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "audit.jsonl"
    lines = written_log(path)
    assert verify("--file", str(path)) == (0, "audit log OK: 12 entries verified\n")
    change, first_bad, why = TAMPERS[tamper]
    path.write_bytes(b"\n".join(change(lines)) + b"\n")
    code, out = verify("--file", str(path))
    assert code == 1 and "BROKEN" in out and first_bad in out and why in out, out


def test_file_log_resumes_its_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    sink.open()
    alerts = make_alerts(9)
    sink.write_batch(alerts[:3])
    snapshot = sink.position()
    sink.write_batch(alerts[3:6])  # written after the snapshot, then the process dies
    sink.close()
    resumed = FileAuditSink(path)
    resumed.open(snapshot)  # recovery: back to the snapshot, the replay writes 3..5 again
    resumed.write_batch(alerts[3:6])
    resumed.close()
    restarted = FileAuditSink(path)  # a plain restart continues the chain
    restarted.open()
    restarted.write_batch(alerts[6:])
    restarted.close()
    assert verify_file(path) == (True, "9 entries verified")
    assert [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()] == [a.alert_id for a in alerts]


def test_redis_log_appends_once_and_tampering_is_found(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        sink = RedisAuditSink(server.url, "t:audit", JsonlDeadLetters(tmp_path / "dead.jsonl"))
        sink.open()
        alerts = make_alerts(10)
        sink.write_batch(alerts[:6])
        sink.write_batch(alerts[4:])  # 4 and 5 replayed: skipped by id
        assert wait_until(lambda: sink.buffer_depth == 0, 10)
        sink.close()
        assert sink.duplicates == 2
        client = redis.Redis.from_url(server.url)
        assert [orjson.loads(e)["id"] for e in client.lrange("t:audit", 0, -1)] == [a.alert_id for a in alerts]
        args = ("--redis", server.url, "--key", "t:audit")
        assert verify(*args) == (0, "audit log OK: 10 entries verified\n")
        original = client.lrange("t:audit", 0, -1)

        def restore() -> None:
            client.delete("t:audit")
            client.rpush("t:audit", *original)

        client.lset("t:audit", 3, edit(original[3]))
        code, out = verify(*args)
        assert code == 1 and "entry 3 (id al-00003)" in out and "edited" in out, out
        restore()
        client.lrem("t:audit", 1, original[5])
        code, out = verify(*args)
        assert code == 1 and "entry 5 (id al-00006)" in out and "removed" in out, out
        restore()
        client.lset("t:audit", 7, original[8])
        client.lset("t:audit", 8, original[7])
        code, out = verify(*args)
        assert code == 1 and "entry 7 (id al-00008)" in out and "reordered" in out, out
        restore()
        assert verify(*args)[0] == 0
