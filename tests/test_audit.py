"""The signed audit log against an insider who can write its store but does not hold the key:
every edit, removal, reordering, re-chaining, cut tail and head reset is found and the first
bad or missing entry named, in a file and in a private Redis (through ``run.py audit
verify``); the writers refuse to continue such a log; a rollback to an older copy of log and
head is found through the head anchored in the other store; never a traceback."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

import run
from config.settings import ConfigError, load_settings
from schemas.audit import GENESIS, AuditKeys, BrokenLog
from schemas.redis_keys import RedisKeys
from sinks.audit import (
    FileAuditSink,
    FileHeadAnchor,
    RedisAuditSink,
    RedisHeadAnchor,
    verify_file,
    verify_redis,
)
from sinks.delivery import JsonlDeadLetters
from tests.conftest import ROOT, audit_key_file
from tests.services import RedisServer, redis_server, wait_until
from tests.test_delivery import make_alerts

SORT = orjson.OPT_SORT_KEYS


# -- helpers ---------------------------------------------------------------------------------


def verify(*args: str) -> tuple[int, str]:
    """``run.py audit verify ARGS`` through its parser and command, in this process."""
    parsed = run.build_parser().parse_args(["audit", "verify", *args])
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = run._audit_verify(parsed, load_settings(environ={}))
    return code, out.getvalue()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``run.py ARGS`` in a subprocess: exit code and everything it printed."""
    done = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return audit_key_file(tmp_path)


@pytest.fixture
def keys(key_file: Path) -> AuditKeys:
    return AuditKeys.load(key_file)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def written_log(path: Path, keys: AuditKeys, n: int = 12) -> tuple[list[bytes], bytes]:
    """A file log of ``n`` alerts written in two batches: its lines and its head."""
    sink = FileAuditSink(path, keys)
    sink.open()
    alerts = make_alerts(n)
    sink.write_batch(alerts[:5])
    sink.write_batch(alerts[5:])
    sink.close()
    return path.read_bytes().splitlines(), Path(f"{path}.head").read_bytes()


def edit(line: bytes) -> bytes:
    entry = orjson.loads(line)
    entry["record"]["severity"] = "low"
    return orjson.dumps(entry, option=SORT)


def forged_head(seq: int, mac: str, key_id: str = "k-test") -> bytes:
    """A head as an insider without the key can make it (a plain SHA-256 for a signature)."""
    body = {"seq": seq, "mac": mac, "key": key_id, "schema_version": "2"}
    return orjson.dumps({**body, "sig": hashlib.sha256(orjson.dumps(body, option=SORT)).hexdigest()}, option=SORT)


def rechain(lines: list[bytes], start: int) -> tuple[list[bytes], bytes]:
    """What the unkeyed scheme let an insider do: renumber and re-link every entry from
    ``start`` on, recompute each MAC as a plain SHA-256, and write a head to match."""
    out = list(lines[:start])
    prev = orjson.loads(lines[start - 1])["mac"] if start else GENESIS
    for seq, line in enumerate(lines[start:], start):
        entry = orjson.loads(line)
        entry.pop("mac")
        entry.update(seq=seq, prev=prev)
        entry["mac"] = prev = hashlib.sha256(orjson.dumps(entry, option=SORT)).hexdigest()
        out.append(orjson.dumps(entry, option=SORT))
    return out, forged_head(len(out) - 1, prev)


def mac_of(line: bytes) -> str:
    return str(orjson.loads(line)["mac"])


def old_head(lines: list[bytes], last: int) -> bytes:
    """The unsigned head of the unkeyed scheme ("seq hash") for an entry."""
    return f"{last} {mac_of(lines[last])}\n".encode()


Tamper = Callable[[list[bytes], bytes], tuple[list[bytes], bytes | None]]


def _edit_and_rechain(lines: list[bytes], head: bytes) -> tuple[list[bytes], bytes | None]:
    return rechain([*lines[:4], edit(lines[4]), *lines[5:]], 4)


def _delete_and_rechain(lines: list[bytes], head: bytes) -> tuple[list[bytes], bytes | None]:
    return rechain(lines[:6] + lines[7:], 6)


def _duplicate_key(lines: list[bytes], head: bytes) -> tuple[list[bytes], bytes | None]:
    # a second "record" that a first-wins JSON reader would show instead of the signed one
    line = lines[2].replace(b'{"id"', b'{"record":{"severity":"low"},"id"', 1)
    return [*lines[:2], line, *lines[3:]], head


FILE_TAMPERS: dict[str, tuple[Tamper, tuple[str, ...]]] = {
    "edited": (lambda lines, head: ([*lines[:4], edit(lines[4]), *lines[5:]], head),
               ("entry 4 (id al-00004)", "MAC does not match its content")),
    "edited_and_rechained": (_edit_and_rechain, ("entry 4 (id al-00004)", "re-chained without the key")),
    "deleted": (lambda lines, head: (lines[:6] + lines[7:], head),
                ("entry 6 (id al-00007)", "has seq 7 where 6 was expected", "removed")),
    "deleted_and_rechained": (_delete_and_rechain, ("entry 6 (id al-00007)", "MAC does not match")),
    "swapped": (lambda lines, head: ([*lines[:2], lines[3], lines[2], *lines[4:]], head),
                ("entry 2 (id al-00003)", "reordered")),
    "cut_tail": (lambda lines, head: (lines[:-2], head),
                 ("the log ends at entry 9 but its signed head says 11: entries 10..11 were removed",)),
    "cut_tail_head_resigned": (lambda lines, head: (lines[:-2], forged_head(9, mac_of(lines[9]))),
                               ("audit.jsonl.head) is not validly signed with key k-test (forged or altered)",
                                "a cut tail cannot be ruled out")),
    "cut_tail_head_old_format": (lambda lines, head: (lines[:-2], old_head(lines, 9)),
                                 ("is not a signed head (not JSON)",)),
    "cut_tail_head_deleted": (lambda lines, head: (lines[:-2], None),
                              ("audit.jsonl.head) is missing: entries after entry 9 may have been removed",)),
    "head_deleted": (lambda lines, head: (lines, None), ("is missing: entries after entry 11",)),
    "head_garbage": (lambda lines, head: (lines, b"\x00\xff garbage {\n"), ("is not a signed head",)),
    "head_empty": (lambda lines, head: (lines, b""), ("audit.jsonl.head) is empty",)),
    "unreadable_line": (lambda lines, head: ([*lines[:3], b'{"seq": 3, "pr', *lines[4:]], head),
                        ("entry 3: unreadable (not JSON",)),
    "emptied": (lambda lines, head: ([], head),
                ("the log is empty but its signed head says 11: entries 0..11 were removed",)),
    "not_canonical": (_duplicate_key, ("entry 2 (id al-00002): not in its canonical form",)),
    "mac_not_hex": (lambda lines, head: ([*lines[:5], lines[5].replace(b'"mac":"', '"mac":"é'.encode()),
                                          *lines[6:]], head),
                    ("entry 5: unreadable ('mac' or 'prev' is not 64 hex digits)",)),
}


# -- the file log ----------------------------------------------------------------------------


def test_intact_file_log_verifies(tmp_path: Path, keys: AuditKeys, key_file: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines, head = written_log(path, keys)
    assert verify("--file", str(path), "--key-file", str(key_file)) == (
        0, f"audit log {path} OK: 12 entries verified\n")
    entries = [orjson.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(12)) and {e["key"] for e in entries} == {"k-test"}
    assert orjson.loads(head)["seq"] == 11 and orjson.loads(head)["mac"] == entries[-1]["mac"]


@pytest.mark.parametrize("tamper", sorted(FILE_TAMPERS))
def test_file_log_tampering_is_found(tmp_path: Path, keys: AuditKeys, key_file: Path, tamper: str) -> None:
    path = tmp_path / "audit.jsonl"
    lines, head = written_log(path, keys)
    change, expected = FILE_TAMPERS[tamper]
    new_lines, new_head = change(lines, head)
    path.write_bytes(b"".join(line + b"\n" for line in new_lines))
    if new_head is None:
        Path(f"{path}.head").unlink()
    else:
        Path(f"{path}.head").write_bytes(new_head)
    code, out = verify("--file", str(path), "--key-file", str(key_file))
    assert code == 1 and out.startswith(f"audit log {path} BROKEN: ") and out.count("\n") == 1, out
    assert all(part in out for part in expected), out


def test_wrong_key_is_found(tmp_path: Path, keys: AuditKeys) -> None:
    path = tmp_path / "audit.jsonl"
    written_log(path, keys)
    other = tmp_path / "other.toml"
    other.write_text(AuditKeys.generate("k-other").to_text())
    code, out = verify("--file", str(path), "--key-file", str(other))
    assert code == 1 and "entry 0 (id al-00000): signed with key k-test, which the key file does not hold" in out
    same_id = tmp_path / "same-id.toml"
    same_id.write_text(AuditKeys.generate("k-test").to_text())
    code, out = verify("--file", str(path), "--key-file", str(same_id))
    assert code == 1 and "entry 0 (id al-00000): its MAC does not match its content" in out, out


def test_unusable_inputs_exit_2_without_a_traceback(tmp_path: Path, keys: AuditKeys, key_file: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written_log(path, keys)
    code, out = cli("audit", "verify", "--file", str(path), "--key-file", str(tmp_path / "missing.toml"))
    assert code == 2 and "audit key file not found" in out and "audit keygen --out" in out, out
    (tmp_path / "bad.toml").write_text("active = \n")
    code, out = cli("audit", "verify", "--file", str(path), "--key-file", str(tmp_path / "bad.toml"))
    assert code == 2 and "not TOML" in out and "Traceback" not in out, out
    code, out = verify("--file", str(tmp_path / "nothing.jsonl"), "--key-file", str(key_file))
    assert code == 2 and "NOT VERIFIED: not found" in out, out
    code, out = verify("--file", str(tmp_path), "--key-file", str(key_file))  # a directory
    assert code == 2 and "NOT VERIFIED" in out and "Traceback" not in out, out
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert verify("--file", str(empty), "--key-file", str(key_file))[0] == 1  # no head: not a log
    Path(f"{path}.head").write_bytes(b"\x00\xff{{{ garbage")
    code, out = cli("audit", "verify", "--file", str(path), "--key-file", str(key_file))
    assert code == 1 and "is not a signed head" in out and "Traceback" not in out, out


def test_file_log_resumes_its_chain(tmp_path: Path, keys: AuditKeys) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, keys)
    sink.open()
    alerts = make_alerts(9)
    sink.write_batch(alerts[:3])
    snapshot = sink.position()
    sink.write_batch(alerts[3:6])  # written after the snapshot, then the process dies
    sink.close()
    resumed = FileAuditSink(path, keys)
    resumed.open(snapshot)  # recovery: back to the snapshot, the replay writes 3..5 again
    resumed.write_batch(alerts[3:6])
    resumed.close()
    restarted = FileAuditSink(path, keys)  # a plain restart continues the chain
    restarted.open()
    restarted.write_batch(alerts[6:])
    restarted.close()
    assert verify_file(path, keys) == (True, "9 entries verified")
    assert [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()] == [a.alert_id for a in alerts]


def test_file_log_continues_after_a_crash_between_log_and_head(tmp_path: Path, keys: AuditKeys) -> None:
    """Entries written but not yet covered by the head, and a line torn by a crash mid-write:
    a restart continues the log (the entries verify, the torn line is cut off)."""
    path = tmp_path / "audit.jsonl"
    written_log(path, keys, 6)
    sink = FileAuditSink(path, keys)
    sink.open()
    head = Path(f"{path}.head").read_bytes()
    sink.write_batch(make_alerts(2, start=6))
    sink.close()
    Path(f"{path}.head").write_bytes(head)  # the head as it was before the last batch
    with open(path, "ab") as handle:
        handle.write(b'{"seq":8,"prev":"')  # torn
    assert verify_file(path, keys)[0] is False  # until the writer repairs it
    sink = FileAuditSink(path, keys)
    sink.open()
    sink.write_batch(make_alerts(1, start=8))
    sink.close()
    assert verify_file(path, keys) == (True, "9 entries verified")


@pytest.mark.parametrize("tamper", ["cut_tail", "cut_tail_head_resigned", "cut_tail_head_deleted",
                                    "edited_and_rechained", "head_garbage"])
def test_file_writer_refuses_to_continue_a_tampered_log(tmp_path: Path, keys: AuditKeys, tamper: str) -> None:
    """Re-signing the head of a cut log would hide the cut: the writer refuses instead."""
    path = tmp_path / "audit.jsonl"
    lines, head = written_log(path, keys)
    new_lines, new_head = FILE_TAMPERS[tamper][0](lines, head)
    path.write_bytes(b"".join(line + b"\n" for line in new_lines))
    if new_head is None:
        Path(f"{path}.head").unlink()
    else:
        Path(f"{path}.head").write_bytes(new_head)
    with pytest.raises(BrokenLog):
        FileAuditSink(path, keys).open()
    assert verify_file(path, keys)[0] is False


def test_file_writer_refuses_to_resume_a_log_cut_below_its_snapshot(tmp_path: Path, keys: AuditKeys) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, keys)
    sink.open()
    sink.write_batch(make_alerts(6))
    snapshot = sink.position()
    sink.close()
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in lines[:4]))
    with pytest.raises(BrokenLog, match="fewer than"):
        FileAuditSink(path, keys).open(snapshot)
    same_length = lines[5].replace(b'"high"', b'"crit"')  # still as long: not cut, edited
    path.write_bytes(b"".join(line + b"\n" for line in [*lines[:5], same_length]))
    with pytest.raises(BrokenLog, match="entry 5 is not the one"):
        FileAuditSink(path, keys).open(snapshot)


def test_live_engine_does_not_start_on_a_tampered_log_or_without_a_key(tmp_path: Path, keys: AuditKeys,
                                                                         key_file: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines, _ = written_log(path, keys)
    path.write_bytes(b"".join(line + b"\n" for line in lines[:-2]))
    Path(f"{path}.head").unlink()
    env = {"CRM__AUDIT__FILE": str(path), "CRM__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    code, out = cli("live", "--quiet", env=env)
    assert code == 2 and "configuration error: audit.key_file" in out and "audit keygen" in out, out
    code, out = cli("live", "--quiet", env={**env, "CRM__AUDIT__KEY_FILE": str(key_file)})
    assert code == 2 and "audit log broken, not appending to it" in out and "head" in out, out
    assert "Traceback" not in out


# -- the Redis log ---------------------------------------------------------------------------


def redis_log(server: RedisServer, keys: AuditKeys, key: str, tmp_path: Path, n: int = 10,
              anchor: FileHeadAnchor | None = None) -> RedisAuditSink:
    sink = RedisAuditSink(server.url, key, keys, JsonlDeadLetters(tmp_path / f"dead-{key}.jsonl"), anchor=anchor)
    sink.open()
    sink.write_batch(make_alerts(n))
    assert wait_until(lambda: sink.buffer_depth == 0, 10)
    return sink


def test_redis_log_appends_once_with_the_dashboards_actions(redis_srv: RedisServer, tmp_path: Path,
                                                           keys: AuditKeys, key_file: Path) -> None:
    from dashboard.store import Auditor

    sink = RedisAuditSink(redis_srv.url, "t:audit", keys, JsonlDeadLetters(tmp_path / "dead.jsonl"))
    sink.open()
    alerts = make_alerts(10)
    sink.write_batch(alerts[:6])
    assert wait_until(lambda: sink.buffer_depth == 0, 10)

    async def users_act() -> None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(redis_srv.url)
        auditor = Auditor(client, "t:audit", keys)
        await auditor.record("login", "ana", "risk_analyst")
        await auditor.record("acknowledge", "ana", "risk_analyst", "ref-1", "c1")
        await client.aclose()

    asyncio.run(users_act())
    sink.write_batch(alerts[4:])  # 4 and 5 replayed: skipped by id
    assert wait_until(lambda: sink.buffer_depth == 0, 10)
    sink.close()
    assert sink.duplicates == 2 and sink.dead_lettered == 0
    client = redis.Redis.from_url(redis_srv.url)
    entries = [orjson.loads(e) for e in client.lrange("t:audit", 0, -1)]
    assert [e["kind"] for e in entries] == ["alert"] * 6 + ["user_action"] * 2 + ["alert"] * 4
    assert {e["key"] for e in entries} == {"k-test"}
    assert not client.sismember("t:audit:ids", "al-00001")  # keyed tags, not the ids themselves
    assert verify("--redis", redis_srv.url, "--key", "t:audit", "--key-file", str(key_file)) == (
        0, "audit log Redis key t:audit OK: 12 entries verified\n")


def test_users_actions_get_in_between_a_burst_of_the_engines_alerts(redis_srv: RedisServer, tmp_path: Path,
                                                                   keys: AuditKeys, key_file: Path) -> None:
    """Twenty users act at once while a burst of alerts is written: every action gets into
    the log, and the log verifies. Before, an action that had read the head before another
    one's append took its stale read for a log gone back (a false tampering alarm, and a
    failed request), and under the engine's burst an action could lose ten races in a row."""
    from dashboard.store import Auditor

    sink = RedisAuditSink(redis_srv.url, "t:audit", keys, JsonlDeadLetters(tmp_path / "dead.jsonl"))
    sink.open()
    sink.write_batch(make_alerts(3000))

    async def users_act() -> int:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(redis_srv.url)
        auditor = Auditor(client, "t:audit", keys)
        await asyncio.gather(*(auditor.record("login", f"user-{i}", "risk_analyst") for i in range(20)))
        await client.aclose()
        return sink.buffer_depth

    assert asyncio.run(users_act()) > 0  # the actions were written during the burst
    assert wait_until(lambda: sink.buffer_depth == 0, 60)
    sink.close()
    assert sink.dead_lettered == 0
    assert verify("--redis", redis_srv.url, "--key", "t:audit", "--key-file", str(key_file)) == (
        0, "audit log Redis key t:audit OK: 3020 entries verified\n")


def _lrem(client: redis.Redis, original: list[bytes]) -> None:
    client.lrem("t:audit", 1, original[5])


def _swap(client: redis.Redis, original: list[bytes]) -> None:
    client.lset("t:audit", 7, original[8])
    client.lset("t:audit", 8, original[7])


def _rechain(client: redis.Redis, original: list[bytes]) -> None:
    lines, head = rechain([*original[:3], edit(original[3]), *original[4:]], 3)
    client.delete("t:audit")
    client.rpush("t:audit", *lines)
    client.set("t:audit:head", head)


RedisTamper = Callable[[redis.Redis, list[bytes]], object]
REDIS_TAMPERS: dict[str, tuple[RedisTamper, tuple[str, ...]]] = {
    "edited": (lambda c, o: c.lset("t:audit", 3, edit(o[3])), ("entry 3 (id al-00003)", "MAC does not match")),
    "edited_and_rechained": (_rechain, ("entry 3 (id al-00003)", "re-chained without the key")),
    "deleted": (_lrem, ("entry 5 (id al-00006)", "removed")),
    "swapped": (_swap, ("entry 7 (id al-00008)", "reordered")),
    "ltrim": (lambda c, o: c.ltrim("t:audit", 0, 6),
              ("the log ends at entry 6 but its signed head says 9: entries 7..9 were removed",)),
    "ltrim_head_deleted": (lambda c, o: (c.ltrim("t:audit", 0, 6), c.delete("t:audit:head")),
                           ("t:audit:head) is missing: entries after entry 6 may have been removed",)),
    "ltrim_head_reset_old_format": (lambda c, o: (c.ltrim("t:audit", 0, 6), c.set("t:audit:head", old_head(o, 6))),
                                    ("t:audit:head) is not a signed head",)),
    "ltrim_head_reset_forged": (lambda c, o: (c.ltrim("t:audit", 0, 6),
                                              c.set("t:audit:head", forged_head(6, mac_of(o[6])))),
                                ("t:audit:head) is not validly signed", "a cut tail cannot be ruled out")),
    "ltrim_head_reset_to_empty": (lambda c, o: (c.ltrim("t:audit", 0, 6),
                                                c.set("t:audit:head", forged_head(-1, GENESIS))),
                                  ("not validly signed",)),
    "head_garbage": (lambda c, o: c.set("t:audit:head", b"\xff\xfe not a head"), ("is not a signed head",)),
    "replaced_by_a_string": (lambda c, o: (c.delete("t:audit"), c.set("t:audit", b"x")), ("is not a list",)),
}


@pytest.mark.parametrize("tamper", sorted(REDIS_TAMPERS))
def test_redis_log_tampering_is_found(redis_srv: RedisServer, tmp_path: Path, keys: AuditKeys, key_file: Path,
                                      tamper: str) -> None:
    redis_log(redis_srv, keys, "t:audit", tmp_path).close()
    client = redis.Redis.from_url(redis_srv.url)
    change, expected = REDIS_TAMPERS[tamper]
    change(client, client.lrange("t:audit", 0, -1))
    code, out = verify("--redis", redis_srv.url, "--key", "t:audit", "--key-file", str(key_file))
    assert code == 1 and out.startswith("audit log Redis key t:audit BROKEN: ") and out.count("\n") == 1, out
    assert all(part in out for part in expected), out


@pytest.mark.parametrize("tamper", ["ltrim", "ltrim_head_deleted", "ltrim_head_reset_forged", "head_garbage"])
def test_redis_writers_refuse_to_continue_a_tampered_log(redis_srv: RedisServer, tmp_path: Path,
                                                         keys: AuditKeys, tamper: str) -> None:
    """Neither the engine's writer nor the dashboard's appends to a trimmed list or under a
    head that is missing or not signed: the engine's record goes to its dead letter with
    the reason, the dashboard's action fails; the log stays as the insider left it."""
    from dashboard.store import Auditor

    redis_log(redis_srv, keys, "t:audit", tmp_path).close()
    client = redis.Redis.from_url(redis_srv.url)
    REDIS_TAMPERS[tamper][0](client, client.lrange("t:audit", 0, -1))
    before = client.lrange("t:audit", 0, -1)
    sink = RedisAuditSink(redis_srv.url, "t:audit", keys, JsonlDeadLetters(tmp_path / "dead.jsonl"))
    sink.open()
    sink.write_batch(make_alerts(1, start=20))
    assert wait_until(lambda: sink.dead_lettered == 1, 10)
    sink.close()
    letter = orjson.loads((tmp_path / "dead.jsonl").read_bytes())
    assert "refused: audit log t:audit" in letter["reason"], letter

    async def act() -> None:
        import redis.asyncio

        async_client = redis.asyncio.Redis.from_url(redis_srv.url)
        try:
            await Auditor(async_client, "t:audit", keys).record("login", "ana", "risk_analyst")
        finally:
            await async_client.aclose()

    with pytest.raises(BrokenLog):
        asyncio.run(act())
    assert client.lrange("t:audit", 0, -1) == before


def test_redis_writer_refuses_a_head_that_went_back(redis_srv: RedisServer, tmp_path: Path, keys: AuditKeys) -> None:
    """An older copy of the log and its (genuine) head put back while the engine runs."""
    sink = redis_log(redis_srv, keys, "t:audit", tmp_path, n=4)
    client = redis.Redis.from_url(redis_srv.url)
    older_head = client.get("t:audit:head")
    sink.write_batch(make_alerts(3, start=4))
    assert wait_until(lambda: sink.buffer_depth == 0, 10)
    client.ltrim("t:audit", 0, 3)
    client.set("t:audit:head", older_head)
    sink.write_batch(make_alerts(1, start=7))
    assert wait_until(lambda: sink.dead_lettered == 1, 10)
    sink.close()
    assert "went back from entry 6 to 3" in (tmp_path / "dead-t:audit.jsonl").read_text()


def test_ids_marked_in_advance_do_not_keep_entries_out(redis_srv: RedisServer, tmp_path: Path,
                                                       keys: AuditKeys) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    client.sadd("t:audit:ids", "al-00000", "al-00001")  # alert ids are deterministic: guessable
    redis_log(redis_srv, keys, "t:audit", tmp_path, n=3).close()
    assert [orjson.loads(e)["id"] for e in client.lrange("t:audit", 0, -1)] == ["al-00000", "al-00001", "al-00002"]


# -- both stores: heads anchored in the other one --------------------------------------------


def test_rollback_to_an_older_copy_is_found_through_the_other_store(redis_srv: RedisServer, tmp_path: Path,
                                                                    keys: AuditKeys, key_file: Path) -> None:
    """An insider who kept an older copy of a log and its genuine signed head and puts both
    back: the log alone verifies (nothing in it is wrong), its head anchored in the other
    store says it went back."""
    path = tmp_path / "audit.jsonl"
    file_sink = FileAuditSink(path, keys, anchor=RedisHeadAnchor(redis_srv.url, "t:audit:file-head"))
    file_sink.open()
    redis_sink = redis_log(redis_srv, keys, "t:audit", tmp_path, n=6, anchor=FileHeadAnchor(f"{path}.redis-head"))
    file_sink.write_batch(make_alerts(6))
    client = redis.Redis.from_url(redis_srv.url)
    older = (client.lrange("t:audit", 0, -1), client.get("t:audit:head"), path.read_bytes(),
             Path(f"{path}.head").read_bytes())
    file_sink.write_batch(make_alerts(4, start=6))
    redis_sink.write_batch(make_alerts(4, start=6))
    assert wait_until(lambda: redis_sink.buffer_depth == 0, 10)
    redis_sink.close()
    file_sink.close()
    both = ("--file", str(path), "--redis", redis_srv.url, "--key", "t:audit", "--key-file", str(key_file))
    assert verify(*both) == (0, f"audit log {path} OK: 10 entries verified (and its head anchored in Redis key "
                                f"t:audit:file-head)\naudit log Redis key t:audit OK: 10 entries verified (and its "
                                f"head anchored in {path}.redis-head)\n")
    client.delete("t:audit")
    client.rpush("t:audit", *older[0])
    client.set("t:audit:head", older[1])
    assert verify("--redis", redis_srv.url, "--key", "t:audit", "--key-file", str(key_file))[0] == 0  # alone
    code, out = verify(*both)
    assert code == 1 and (f"audit log Redis key t:audit BROKEN: the log ends at entry 5 but its head anchored in "
                          f"{path}.redis-head says 9: entries 6..9 were removed") in out, out
    # nor does the writer go on from there (and overwrite the anchor)
    writer = redis_log(redis_srv, keys, "t:audit", tmp_path, n=1, anchor=FileHeadAnchor(f"{path}.redis-head"))
    assert wait_until(lambda: writer.dead_lettered == 1, 10)
    writer.close()
    assert "went back from entry 9 to 5" in (tmp_path / "dead-t:audit.jsonl").read_text()
    path.write_bytes(older[2])
    Path(f"{path}.head").write_bytes(older[3])
    assert verify_file(path, keys)[0]  # alone
    code, out = verify(*both)
    assert code == 1 and (f"audit log {path} BROKEN: the log ends at entry 5 but its head anchored in Redis key "
                          f"t:audit:file-head says 9: entries 6..9 were removed") in out, out
    with pytest.raises(BrokenLog, match="it ends at entry 5 but its head anchored in Redis key t:audit:file-head"):
        FileAuditSink(path, keys, anchor=RedisHeadAnchor(redis_srv.url, "t:audit:file-head")).open()
    path.unlink()  # the whole log and its head deleted: the anchor still says what there was
    Path(f"{path}.head").unlink()
    code, out = verify(*both)
    assert code == 1 and "the log is empty but its head anchored in Redis key t:audit:file-head says 9" in out, out


# -- keys, configuration, layering -----------------------------------------------------------


def test_keygen_writes_a_private_key_file_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    code, out = cli("audit", "keygen", "--out", str(path), "--id", "k1")
    assert code == 0 and "audit key k1 written to" in out, out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = AuditKeys.load(path)
    assert first.active == "k1" and len(first.keys["k1"]) == 32 and "k1" in repr(first)
    assert cli("audit", "keygen", "--out", str(path))[0] == 2  # never overwrites a key that verifies logs
    log = tmp_path / "audit.jsonl"
    sink = FileAuditSink(log, first)
    sink.open()
    sink.write_batch(make_alerts(3))
    sink.close()
    code, out = cli("audit", "keygen", "--out", str(path), "--add", "--id", "k2")
    assert code == 0 and "added to" in out and stat.S_IMODE(path.stat().st_mode) == 0o600, out
    rotated = AuditKeys.load(path)
    assert rotated.active == "k2" and set(rotated.keys) == {"k1", "k2"} and rotated.keys["k1"] == first.keys["k1"]
    sink = FileAuditSink(log, rotated)
    sink.open()
    sink.write_batch(make_alerts(3, start=3))
    sink.close()
    assert verify_file(log, rotated) == (True, "6 entries verified")
    assert verify_file(log, first) == (
        False, "entry 3 (id al-00003): signed with key k2, which the key file does not hold "
               "(the wrong key file, or a forged entry)")


def test_audit_needs_a_key_file_which_is_masked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit.key_file: .*audit keygen --out FILE.*CRM__AUDIT__KEY_FILE"):
        load_settings(environ={"CRM__AUDIT__REDIS": "true"})
    settings = load_settings(environ={"CRM__AUDIT__FILE": "a.jsonl", "CRM__AUDIT__KEY_FILE": "/run/secrets/k.toml"})
    assert settings.masked()["audit"]["key_file"] == "***"
    assert "QUJD" not in repr(AuditKeys.parse('active = "k"\n[keys]\nk = "' + "QUJD" * 11 + '"\n'))


def test_dashboard_needs_the_key(redis_srv: RedisServer, tmp_path: Path) -> None:
    from dashboard.auth import add_user
    from dashboard.server import build_app
    from schemas.audit import AuditKeyError

    settings = load_settings(environ={"CRM__REDIS__URL": redis_srv.url})
    with pytest.raises(AuditKeyError, match="audit key"):
        build_app(settings)
    users = tmp_path / "users.toml"
    add_user(users, "ana", "risk_analyst", "a-long-test-password", "")
    code, out = cli("dashboard", env={"CRM__REDIS__URL": redis_srv.url, "CRM__DASHBOARD__USERS_FILE": str(users)})
    assert code == 2 and "the dashboard audits its users' actions: no audit key file" in out, out


def test_demo_makes_its_key_and_keeps_off_a_log_it_cannot_continue(redis_srv: RedisServer, tmp_path: Path) -> None:
    settings = load_settings(environ={"CRM__REDIS__URL": redis_srv.url})
    key_file = tmp_path / "audit-key.toml"
    with redirect_stderr(io.StringIO()):
        assert run._demo_audit(settings, key_file) == ""
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and AuditKeys.load(key_file)
    client = redis.Redis.from_url(redis_srv.url)
    log_key = RedisKeys("crm:").audit_log("audit")
    client.rpush(log_key, b'{"seq":0,"hash":"00"}')  # a log of the unkeyed format
    client.set(f"{log_key}:head", b"0 00")
    problem = run._demo_audit(settings, key_file)
    assert "the audit log in Redis cannot be continued with the key in" in problem and "audit verify" in problem
    demo = replace(settings, audit=replace(settings.audit, redis=True, key_file=str(key_file)))
    assert not run._audit_ready(demo)


def test_the_format_lives_in_schemas_and_the_dashboard_does_not_import_sinks() -> None:
    """Of sinks, the dashboard uses only the Redis client factory (one way to reach Redis)."""
    def imports(path: Path) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        return names

    for path in (ROOT / "dashboard").glob("*.py"):
        assert not {name for name in imports(path) if name.startswith("sinks")} - {"sinks.redis_client"}, path
    assert not {name for name in imports(ROOT / "schemas" / "audit.py")
                if name.split(".")[0] in ("redis", "confluent_kafka", "bytewax", "sinks")}


def test_verify_redis_reports_an_unreachable_server(keys: AuditKeys) -> None:
    from sinks.audit import CannotVerify

    with pytest.raises(CannotVerify, match="cannot read the audit log from Redis"):
        verify_redis("redis://127.0.0.1:1/0", "t:audit", keys)
