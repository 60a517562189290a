"""The audit trail: an append-only log, chained and signed with an HMAC key, of every alert
emitted and every alert lifecycle change (de-duplicated, grouped, escalated, snoozed,
suppressed). The format (entries, the signed head, the key file) and its verification
are ``schemas.audit``; this module writes and reads the two stores.

``FileAuditSink``: a JSONL file and its signed head ``FILE.head``. Exactly once with
recovery (truncated back to its snapshot on resume, like ``sinks.jsonl``). It continues an
existing log only if the log agrees with its signed head (entries after the head, left by
a crash between writing them and the head, must verify; a torn last line is cut off), and
otherwise refuses to open (``BrokenLog``): re-signing the head of a log that was cut would
hide the cut.

``RedisAuditSink``: the Redis list ``KEY``, its signed head ``KEY:head`` and the keyed tags
of the ids appended ``KEY:ids``. The script ``schemas.audit.REDIS_APPEND_ONCE`` appends an
entry only if its id was never appended, the head is the one the entry links to and the
list's length agrees with the head, so replays after recovery are skipped and a trimmed
list is refused; a head that is not signed, or that went back, is refused too. Refused
records go to the dead letter with the reason. Back-pressure as in ``sinks.delivery``.

With both stores, each log's signed head is also anchored in the other store (the file
log's in ``KEY:file-head``, the Redis log's in ``FILE.redis-head``): a checkpoint, written
after the log, that an insider who can rewrite one store cannot roll back.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from schemas.audit import (
    EMPTY_SEQ,
    GENESIS,
    REDIS_APPEND_ONCE,
    Appender,
    AuditKeyError,
    AuditKeys,
    BrokenLog,
    Entry,
    Head,
    UnknownKey,
    Verdict,
    checked_head,
    link,
    not_behind,
    redis_keys,
    verify_log,
)
from schemas.crypto import Sealer
from schemas.redis_url import RedisEndpoint
from sinks.base import Record, Sink
from sinks.delivery import BufferedSink, DeadLetterOut, RetryPolicy, Undeliverable, record_id
from sinks.jsonl import close_durably
from sinks.redis_client import connect

log = logging.getLogger(__name__)


def record_fields(record: Record, sealer: Sealer | None = None) -> tuple[str, str, Any]:
    """An output record's ``kind``, ``id`` and JSON value, as its audit entry holds them: with
    a ``sealer``, its personal fields sealed (``schemas.crypto``; by the record's id, so a
    replayed record gives the same entry). The entry's MAC covers the sealed value: the
    chain verifies without the PII keys."""
    kind = getattr(record, "kind", None) or type(record).__name__.lower()
    rid = record_id(record)
    value = orjson.loads(record.to_bytes())
    return str(kind), rid, value if sealer is None else sealer.seal_record(value, rid)


def head_path(path: str | Path) -> Path:
    """Where a file log's signed head is kept."""
    return Path(f"{path}.head")


def redis_anchor_path(path: str | Path) -> Path:
    """Where the Redis log's head is anchored beside the file log ``path``."""
    return Path(f"{path}.redis-head")


def file_anchor_key(key: str) -> str:
    """Where the file log's head is anchored beside the Redis log ``key``."""
    return f"{key}:file-head"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- anchors ---------------------------------------------------------------------------------


class HeadAnchor(Protocol):
    """Where a log's signed head is also kept (the other store): best effort, never ahead
    of the log."""

    where: str

    def get(self) -> bytes | None:
        """The head kept there, if any (``None`` also if the store cannot be read)."""

    def put(self, head: bytes) -> None: ...

    def close(self) -> None: ...


class FileHeadAnchor:
    """A log's head in a file (the Redis log's head beside the file log)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def get(self) -> bytes | None:
        with contextlib.suppress(OSError):
            return self.path.read_bytes()
        return None

    def put(self, head: bytes) -> None:
        try:
            _write_atomically(self.path, head + b"\n")
        except OSError as exc:
            log.warning("audit anchor %s not written: %s", self.where, exc)

    def close(self) -> None:
        pass


class RedisHeadAnchor:
    """A log's head in a Redis key (the file log's head beside the Redis log), set by a
    background thread so the dataflow never waits for Redis: the latest head put is set,
    retried every second while Redis is down; a close waits ``close_timeout_s`` for it."""

    def __init__(self, url: str | RedisEndpoint, key: str, socket_timeout_s: float = 5.0,
                 close_timeout_s: float = 5.0) -> None:
        self._url, self.key, self._timeout_s, self._close_timeout_s = url, key, socket_timeout_s, close_timeout_s
        self.where = f"Redis key {key}"
        self._pending: bytes | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def get(self) -> bytes | None:
        import redis

        try:
            client = connect(self._url, self._timeout_s)
        except redis.RedisError:  # a cluster's client reads its nodes when made
            return None
        try:
            value = client.get(self.key)
            return value if isinstance(value, bytes) else None
        except redis.RedisError:
            return None
        finally:
            client.close()

    def put(self, head: bytes) -> None:
        with self._cond:
            self._pending = head
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-anchor", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        import redis

        client: Any = None
        failing = False
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._closing:
                        self._cond.wait()
                    head = self._pending
                    if head is None:
                        return
                try:
                    client = client or connect(self._url, self._timeout_s)
                    client.set(self.key, head)
                except redis.RedisError as exc:
                    if not failing:
                        log.warning("audit anchor %s not set, retrying: %s", self.where, exc)
                    failing = True
                    with self._cond:
                        self._cond.wait(1.0)
                        if self._closing:
                            return
                    continue
                failing = False
                with self._cond:
                    if self._pending is head:
                        self._pending = None
                    self._cond.notify_all()
        finally:
            if client is not None:
                client.close()

    def close(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None or self._thread is None, self._close_timeout_s)
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self._close_timeout_s)


# -- the file log ----------------------------------------------------------------------------


def _lines_backwards(handle: BinaryIO, end: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines before offset ``end``, last first; the first item is what follows
    the last newline (``b""`` if the file ends with one)."""
    position, rest = end, b""
    while position > 0:
        step = min(chunk, position)
        position -= step
        handle.seek(position)
        parts = (handle.read(step) + rest).split(b"\n")
        rest = parts[0]
        yield from reversed(parts[1:])
    yield rest


def _signed(entry: Entry, keys: AuditKeys) -> bool:
    try:
        return hmac.compare_digest(entry.expected_mac(keys), entry.mac)
    except AuditKeyError:
        return False


@dataclass(frozen=True)
class _Continuation:
    seq: int  # the next entry's seq
    prev: str  # the last entry's MAC
    size: int  # bytes to keep (a torn last line is cut off)


def _continuation(handle: BinaryIO, stored_head: bytes | None, keys: AuditKeys, where: str) -> _Continuation:
    """Where the file log in ``handle`` goes on, if it agrees with its signed head; else
    ``BrokenLog``. Only the end of the file is read: the entry the head names and those
    after it (written before a crash could write the head), which must verify."""
    head = checked_head(keys, stored_head, f"{where}.head")
    end = handle.seek(0, os.SEEK_END)
    lines = _lines_backwards(handle, end)
    torn = next(lines)  # a line cut short by a crash mid-write: never covered by the head
    size = end - len(torn)
    after: list[Entry] = []
    found = head is not None and head.seq == EMPTY_SEQ
    for raw in lines:
        if not raw.strip():
            continue
        try:
            entry = Entry.parse(raw)
        except ValueError as exc:
            raise BrokenLog(f"{where}: an entry near its end is unreadable ({exc})") from None
        if head is None:
            raise BrokenLog(f"{where}: its signed head {where}.head is missing")
        if entry.seq > head.seq:
            after.append(entry)
            continue
        if entry.seq != head.seq or not hmac.compare_digest(entry.mac, head.mac):
            raise BrokenLog(f"{where}: it ends at entry {entry.seq} but its signed head says {head.seq}")
        found = True
        break
    if head is None:
        return _Continuation(0, GENESIS, size)
    if not found:
        raise BrokenLog(f"{where}: it does not hold entry {head.seq}, which its signed head names")
    seq, prev = head.seq, head.mac
    for entry in reversed(after):
        if not _signed(entry, keys) or entry.seq != seq + 1 or entry.prev != prev:
            raise BrokenLog(f"{where}: entry {entry.seq} (id {entry.id}), after its signed head, does not verify")
        seq, prev = entry.seq, entry.mac
    return _Continuation(seq + 1, prev, size)


def check_file_log(path: str | Path, keys: AuditKeys, anchor: HeadAnchor | None = None) -> None:
    """``BrokenLog`` if the engine could not continue the file log at ``path``: it does not
    agree with its signed head, or ends before its head anchored in the other store (a
    start-up check; a log that does not exist yet is fine unless its anchor says otherwise)."""
    path = Path(path)
    last = EMPTY_SEQ
    if path.exists():
        try:
            stored = head_path(path).read_bytes()
        except FileNotFoundError:
            stored = None
        with open(path, "rb") as handle:
            last = _continuation(handle, stored, keys, str(path)).seq - 1
    if anchor is not None:
        not_behind(keys, anchor.get(), last, str(path), anchor.where)


class FileAuditSink(Sink):
    """The audit log as a JSONL file with its signed head (see the module doc). Delivery:
    exactly once into the file with recovery (truncated to the snapshot on resume); without
    recovery a restart continues the chain."""

    def __init__(self, path: str | Path, keys: AuditKeys, anchor: HeadAnchor | None = None,
                 sealer: Sealer | None = None) -> None:
        self._path = Path(path)
        self._sealer = sealer
        self._head_path = head_path(self._path)
        self._keys = keys
        self._anchor = anchor
        self._file: BinaryIO | None = None
        self._seq, self._prev = 0, GENESIS

    def open(self, resume: Any = None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "a+b")  # noqa: SIM115 (held open until close)
        try:
            if isinstance(resume, tuple):
                size, self._seq, self._prev = resume
                self._check_snapshot(size)
                self._file.truncate(size)
            else:
                try:
                    stored: bytes | None = self._head_path.read_bytes()
                except FileNotFoundError:
                    stored = None
                going_on = _continuation(self._file, stored, self._keys, str(self._path))
                if self._anchor is not None:
                    not_behind(self._keys, self._anchor.get(), going_on.seq - 1, str(self._path), self._anchor.where)
                if going_on.size < self._file.seek(0, os.SEEK_END):
                    log.warning("audit log %s: a torn last line (a crash mid-write) cut off", self._path)
                    self._file.truncate(going_on.size)
                self._seq, self._prev = going_on.seq, going_on.prev
        except BaseException:
            self._file.close()
            self._file = None
            raise
        self._file.seek(0, os.SEEK_END)
        self._write_head()

    def _check_snapshot(self, size: int) -> None:
        """The file still holds what it held at the snapshot (its last entry there)."""
        assert self._file is not None
        end = self._file.seek(0, os.SEEK_END)
        if size > end:
            raise BrokenLog(f"{self._path}: {end} bytes, fewer than the {size} it had at the last snapshot")
        if self._seq == 0:
            return
        lines = (raw for raw in _lines_backwards(self._file, size) if raw.strip())
        try:
            entry: Entry | None = Entry.parse(next(lines, b""))
        except ValueError:
            entry = None
        if entry is None or entry.seq != self._seq - 1 or not hmac.compare_digest(entry.mac, self._prev) \
                or not _signed(entry, self._keys):
            raise BrokenLog(f"{self._path}: entry {self._seq - 1} is not the one it held at the last snapshot")

    def write_batch(self, records: list[Record]) -> None:
        assert self._file is not None, "FileAuditSink.write_batch before open"
        lines = []
        for record in records:
            entry = link(self._keys, self._seq, self._prev, *record_fields(record, self._sealer))
            self._seq, self._prev = self._seq + 1, entry.mac
            lines.append(entry.to_bytes() + b"\n")
        self._file.write(b"".join(lines))
        self._file.flush()
        self._write_head()

    def _write_head(self) -> None:
        head = Head.sign(self._keys, self._seq - 1, self._prev).to_bytes()
        _write_atomically(self._head_path, head + b"\n")
        if self._anchor is not None:
            self._anchor.put(head)

    def position(self) -> tuple[int, int, str]:
        assert self._file is not None
        return self._file.tell(), self._seq, self._prev

    def close(self) -> None:
        if self._file is not None:
            close_durably(self._file)
            self._file = None
        if self._anchor is not None:
            self._anchor.close()


# -- the Redis log ---------------------------------------------------------------------------


def check_redis_log(url: str | RedisEndpoint, key: str, keys: AuditKeys, socket_timeout_s: float = 5.0,
                    anchor: HeadAnchor | None = None) -> None:
    """``BrokenLog`` if the Redis log ``key`` does not agree with its signed head (its
    length and last entry) or ends before its head anchored in the other store: a start-up
    check. An unreachable Redis passes (the writers check every append)."""
    import redis

    client: Any = None
    try:
        client = connect(url, socket_timeout_s)
        pipe = client.pipeline(transaction=True)  # one slot: the log's keys share its hash tag
        pipe.get(f"{key}:head")
        pipe.llen(key)
        pipe.lindex(key, -1)
        stored, length, last = pipe.execute()
    except redis.ResponseError as exc:
        raise BrokenLog(f"Redis key {key}: not an audit log ({exc})") from None
    except redis.RedisError:
        return
    finally:
        if client is not None:
            client.close()
    head = checked_head(keys, stored, f"Redis key {key}:head")
    if anchor is not None:
        not_behind(keys, anchor.get(), EMPTY_SEQ if head is None else head.seq, f"Redis key {key}", anchor.where)
    if head is None:
        if length:
            raise BrokenLog(f"Redis key {key}: {length} entries but no signed head")
        return
    if length != head.seq + 1:
        raise BrokenLog(f"Redis key {key}: {length} entries but its signed head says the last is entry {head.seq}")
    if last is not None:
        try:
            mac = Entry.parse(last).mac
        except ValueError:
            mac = ""
        if not hmac.compare_digest(mac, head.mac):
            raise BrokenLog(f"Redis key {key}: its last entry is not the one its signed head names")


class RedisAuditSink(BufferedSink):
    """The audit log as the Redis list ``key`` (see the module doc). Delivery: each record
    appended once (by id), in order; held in the delivery buffer while Redis is down;
    refused (to the dead letter, with the reason) if the log does not verify."""

    def __init__(self, url: str | RedisEndpoint, key: str, keys: AuditKeys, dead_letters: DeadLetterOut,
                 socket_timeout_s: float = 5.0, capacity: int = 10_000, policy: RetryPolicy | None = None,
                 anchor: HeadAnchor | None = None, sealer: Sealer | None = None) -> None:
        # One record per batch: a refused record goes to the dead letter alone.
        super().__init__("audit", dead_letters, capacity=capacity, batch_size=1, policy=policy)
        self._url, self.key, self._socket_timeout_s = url, key, socket_timeout_s
        self._appender = Appender(keys, f"Redis key {key}")
        self._anchor = anchor
        self._sealer = sealer
        self._client: Any = None
        self._script: Any = None
        self.duplicates = 0

    def connect(self) -> None:
        self._client = self._script = None  # made on the first delivery (retried while Redis is down)
        if self._anchor is not None:  # the log must not go back from its anchored head either
            try:
                anchored = checked_head(self._appender.keys, self._anchor.get(), f"anchored in {self._anchor.where}")
            except BrokenLog as exc:
                log.error("audit log %s: %s", self.key, exc)
                anchored = None
            if anchored is not None:
                self._appender.appended(anchored)

    def deliver(self, records: list[Record]) -> None:
        if self._client is None:
            client = connect(self._url, self._socket_timeout_s)
            self._client, self._script = client, client.register_script(REDIS_APPEND_ONCE)
        keys = redis_keys(self.key)
        for record in records:
            fields = record_fields(record, self._sealer)
            for _ in range(3):  # the head moved under us (another writer): re-read and re-link
                stored = self._client.get(keys[1])
                try:
                    entry, head = self._appender.next(stored, *fields)
                except UnknownKey as exc:  # a key another writer has and this one not yet: retried
                    raise ConnectionError(f"audit log {self.key}: {exc}") from None
                except BrokenLog as exc:
                    raise Undeliverable(f"audit log {self.key}: {exc}") from None
                result = self._script(keys=keys, args=self._appender.script_args(entry, stored, head))
                if result == 1:
                    self._appender.appended(head)
                    if self._anchor is not None:
                        self._anchor.put(head.to_bytes())
                elif result == 0:
                    self.duplicates += 1
                elif result == -2:
                    raise Undeliverable(f"audit log {self.key}: the list's length does not agree with its "
                                        f"signed head (entries removed or added without the key)")
                if result != -1:
                    break
            else:
                raise ConnectionError(f"audit log {self.key}: head kept moving")

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._anchor is not None:
            self._anchor.close()


# -- verification ----------------------------------------------------------------------------


class CannotVerify(Exception):
    """The log cannot be read (not found, its store unreachable): no verdict either way."""


def verify_file(path: str | Path, keys: AuditKeys, anchor: bytes | None = None,
                anchor_name: str = "the other store") -> Verdict:
    """Verify a JSONL audit log, its signed ``.head`` and, if given, its head anchored in
    the other store. ``CannotVerify`` if there is no such log or it cannot be read."""
    path = Path(path)
    try:
        try:
            stored = head_path(path).read_bytes()
        except FileNotFoundError:
            stored = None
        if not path.exists():
            if stored is None and anchor is None:
                raise CannotVerify("not found")
            return verify_log([], stored, keys, anchor, str(head_path(path)), anchor_name)
        with open(path, "rb") as handle:
            return verify_log((line for line in handle if line.strip()), stored, keys, anchor,
                              str(head_path(path)), anchor_name)
    except OSError as exc:
        raise CannotVerify(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None


def _lrange_all(client: Any, key: str, chunk: int = 1000) -> Iterator[bytes]:
    start = 0
    while True:
        part = client.lrange(key, start, start + chunk - 1)
        yield from part
        if len(part) < chunk:
            return
        start += chunk


def verify_redis(url: str | RedisEndpoint, key: str, keys: AuditKeys, anchor: bytes | None = None,
                 anchor_name: str = "the other store") -> Verdict:
    """Verify an audit log kept in the Redis list ``key``, its signed ``key:head`` and, if
    given, its head anchored in the other store. ``CannotVerify`` if there is no such log
    or Redis cannot be read."""
    import redis

    client: Any = None
    try:
        client = connect(url, 10.0)
        stored = client.get(f"{key}:head")
        if stored is None and anchor is None and not client.exists(key):
            raise CannotVerify("no such list in Redis, nor its head")
        return verify_log(_lrange_all(client, key), stored, keys, anchor, f"Redis key {key}:head", anchor_name)
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise CannotVerify(f"Redis refused to read the audit log: {exc}") from None
        return Verdict(False, f"Redis key {key} is not a list, or {key}:head not a string: the log was replaced")
    except redis.RedisError as exc:
        raise CannotVerify(f"cannot read the audit log from Redis: {exc}") from None
    finally:
        if client is not None:
            client.close()


