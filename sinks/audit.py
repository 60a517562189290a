"""The audit trail: an append-only, hash-chained log of every alert emitted and every
alert lifecycle change (de-duplicated, grouped, escalated, snoozed, suppressed).

Each entry is canonical JSON (sorted keys, no whitespace) with ``seq`` (0, 1, 2, ...),
``prev`` (the ``hash`` of the entry before, 64 zeros for the first), ``kind``, ``id`` (the
record's id), ``record`` (the record itself) and ``hash``: the SHA-256 of the entry's
canonical bytes without ``hash``. So an edited entry no longer matches its own hash (or, if
its hash was recomputed, the next entry's ``prev``), a deleted entry leaves a gap in
``seq`` and a broken link, and two swapped entries are out of ``seq`` order.
``verify_entries`` names the first bad entry. The latest ``seq`` and ``hash`` are also
kept beside the log (the ``.head`` file, the ``:head`` key), so a cut tail is found too.

Two stores: ``FileAuditSink`` (JSONL; exactly once with recovery: truncated back to its
snapshot on resume, like ``sinks.jsonl``) and ``RedisAuditSink`` (a list; a Lua script
appends an entry only if its id was never appended and the log's head is the one the
entry links to, so replays after recovery are skipped; back-pressure and dead letters as
in ``sinks.delivery``).

>>> entries = chain([{"kind": "alert", "id": "a1", "record": {}},
...                  {"kind": "alert", "id": "a2", "record": {}}])
>>> verify_entries(entries)
(True, '2 entries verified')
>>> entries[0]["record"] = {"severity": "low"}
>>> verify_entries(entries)
(False, 'entry 0 (id a1): its content does not match its hash (edited)')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from sinks.base import Record, Sink
from sinks.delivery import BufferedSink, DeadLetterOut, RetryPolicy, record_id
from sinks.jsonl import close_durably

GENESIS = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry is hashed by: sorted keys, no whitespace, without ``hash``."""
    return orjson.dumps({k: v for k, v in entry.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)


def link(seq: int, prev: str, kind: str, rid: str, record: Any) -> dict[str, Any]:
    """The entry number ``seq`` following the entry whose hash is ``prev``."""
    entry = {"seq": seq, "prev": prev, "kind": kind, "id": rid, "record": record}
    entry["hash"] = hashlib.sha256(canonical(entry)).hexdigest()
    return entry


def chain(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries for ``items`` (each with ``kind``, ``id``, ``record``) from the start of a log."""
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for seq, item in enumerate(items):
        out.append(link(seq, prev, item["kind"], item["id"], item["record"]))
        prev = out[-1]["hash"]
    return out


def entry_for(record: Record, seq: int, prev: str) -> dict[str, Any]:
    """The audit entry of an output record (an alert or a lifecycle change)."""
    kind = getattr(record, "kind", None) or type(record).__name__.lower()
    return link(seq, prev, str(kind), record_id(record), orjson.loads(record.to_bytes()))


def verify_entries(entries: Iterable[dict[str, Any] | bytes],
                   head: tuple[int, str] | None = None) -> tuple[bool, str]:
    """Check the whole chain; ``(ok, message)``, the message naming the first bad entry."""
    prev, count = GENESIS, 0
    for position, raw in enumerate(entries):
        try:
            entry = orjson.loads(raw) if isinstance(raw, bytes) else raw
            seq, rid, stored = entry["seq"], entry.get("id"), entry["hash"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return False, f"entry {position}: unreadable ({exc})"
        name = f"entry {position} (id {rid})"
        if seq != position:
            return False, (f"{name}: has seq {seq} where {position} was expected "
                           f"(an entry was removed or entries were reordered)")
        if hashlib.sha256(canonical(entry)).hexdigest() != stored:
            return False, f"{name}: its content does not match its hash (edited)"
        if entry["prev"] != prev:
            return False, f"{name}: does not link to the entry before it (an entry was altered)"
        prev, count = stored, position + 1
    if head is not None and head != (count - 1, prev if count else GENESIS):
        return False, (f"the log ends at entry {count - 1} but its head says entry {head[0]} "
                       f"(entries were removed from the end, or the head was altered)")
    return True, f"{count} entries verified"


def _parse_head(raw: bytes | str | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    seq, _, digest = text.strip().partition(" ")
    return int(seq), digest


def verify_file(path: str | Path) -> tuple[bool, str]:
    """Verify a JSONL audit log (and its ``.head`` file when there is one)."""
    path = Path(path)
    head_path = path.with_name(path.name + ".head")
    head = _parse_head(head_path.read_text()) if head_path.exists() else None
    with open(path, "rb") as handle:
        return verify_entries((line for line in handle if line.strip()), head)


def _lrange_all(client: Any, key: str, chunk: int = 1000) -> Iterator[bytes]:
    start = 0
    while True:
        part = client.lrange(key, start, start + chunk - 1)
        yield from part
        if len(part) < chunk:
            return
        start += chunk


def verify_redis(url: str, key: str) -> tuple[bool, str]:
    """Verify an audit log kept in the Redis list ``key`` (and its ``key:head``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return verify_entries(_lrange_all(client, key), _parse_head(client.get(f"{key}:head")))
    finally:
        client.close()


class FileAuditSink(Sink):
    """The audit log as a JSONL file. Delivery: exactly once into the file with recovery
    (truncated to the snapshot on resume); without recovery a restart continues the chain."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._head_path = self._path.with_name(self._path.name + ".head")
        self._file: BinaryIO | None = None
        self._seq, self._prev = 0, GENESIS

    def open(self, resume: Any = None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "a+b")  # noqa: SIM115 (held open until close)
        if isinstance(resume, tuple):
            size, self._seq, self._prev = resume
            self._file.truncate(size)
        else:
            self._seq, self._prev = self._tail()
        self._file.seek(0, os.SEEK_END)
        self._write_head()

    def _tail(self) -> tuple[int, str]:
        assert self._file is not None
        self._file.seek(0)
        last = None
        for line in self._file:
            if line.strip():
                last = line
        if last is None:
            return 0, GENESIS
        entry = orjson.loads(last)
        return entry["seq"] + 1, entry["hash"]

    def write_batch(self, records: list[Record]) -> None:
        assert self._file is not None, "FileAuditSink.write_batch before open"
        lines = []
        for record in records:
            entry = entry_for(record, self._seq, self._prev)
            self._seq, self._prev = self._seq + 1, entry["hash"]
            lines.append(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n")
        self._file.write(b"".join(lines))
        self._file.flush()
        self._write_head()

    def _write_head(self) -> None:
        tmp = self._head_path.with_name(self._head_path.name + ".tmp")
        tmp.write_text(f"{self._seq - 1} {self._prev}\n" if self._seq else f"-1 {GENESIS}\n")
        os.replace(tmp, self._head_path)

    def position(self) -> tuple[int, int, str]:
        assert self._file is not None
        return self._file.tell(), self._seq, self._prev

    def close(self) -> None:
        if self._file is not None:
            close_durably(self._file)
            self._file = None


# KEYS: 1 the log (a list), 2 its head ("seq hash"), 3 the set of ids appended
# ARGV: 1 id, 2 the head the entry links to ("" for an empty log), 3 the new head, 4 the entry
_APPEND_ONCE = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  return 0
end
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[2] then
  return -1
end
redis.call('RPUSH', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""


#: For other writers of the same log (the dashboard appends its users' actions).
APPEND_ONCE = _APPEND_ONCE
parse_head = _parse_head


class RedisAuditSink(BufferedSink):
    """The audit log as the Redis list ``key`` (see the module doc). Delivery: each record
    appended once (by id), in order; held in the delivery buffer while Redis is down."""

    def __init__(self, url: str, key: str, dead_letters: DeadLetterOut, socket_timeout_s: float = 5.0,
                 capacity: int = 10_000, policy: RetryPolicy | None = None) -> None:
        super().__init__("audit", dead_letters, capacity=capacity, batch_size=100, policy=policy)
        self._url, self.key, self._socket_timeout_s = url, key, socket_timeout_s
        self._client: Any = None
        self._script: Any = None
        self.duplicates = 0

    def connect(self) -> None:
        import redis

        self._client = redis.Redis.from_url(self._url, socket_timeout=self._socket_timeout_s,
                                            socket_connect_timeout=self._socket_timeout_s)
        self._script = self._client.register_script(_APPEND_ONCE)

    def deliver(self, records: list[Record]) -> None:
        keys = [self.key, f"{self.key}:head", f"{self.key}:ids"]
        for record in records:
            for _ in range(3):  # the head moved under us (another writer): re-read and re-link
                head = _parse_head(self._client.get(keys[1]))
                seq, prev = (head[0] + 1, head[1]) if head else (0, GENESIS)
                entry = entry_for(record, seq, prev)
                result = self._script(keys=keys, args=[
                    entry["id"], f"{head[0]} {head[1]}" if head else "", f"{seq} {entry['hash']}",
                    orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)])
                if result == 0:
                    self.duplicates += 1
                if result != -1:
                    break
            else:
                raise ConnectionError(f"audit log {self.key}: head kept moving")

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
