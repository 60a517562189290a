"""The audit chain's wire format: entries, the signed head, the key file, verification.

The audit log is a sequence of entries, each canonical JSON (sorted keys, no whitespace):
``seq`` (0, 1, 2, ...), ``prev`` (the ``mac`` of the entry before, 64 zeros for the first),
``kind``, ``id`` (the record's id), ``record`` (the record itself), ``key`` (the id of the
key it was signed with), ``schema_version`` (``"2"``) and ``mac``: HMAC-SHA256, under that
key, of ``crm-audit-entry`` and a NUL byte followed by the entry's canonical bytes without
``mac``. Whoever can write the log's store but does not hold the key can neither edit an
entry nor re-chain the log after an edit: every changed entry fails its MAC.

The log's head says where the log ends: canonical JSON of ``seq`` and ``mac`` of the last
entry (-1 and 64 zeros for an empty log), ``key`` and ``schema_version``, signed with
``sig``: the HMAC of ``crm-audit-head``, a NUL byte and the head's bytes without ``sig``.
It is kept beside the log (the file ``FILE.head``, the Redis key ``KEY:head``) and, when
the engine writes both a file and a Redis log, each log's head is also anchored in the
other store (``KEY:file-head`` in Redis, ``FILE.redis-head`` beside the file). A cut tail
shows against the head; a head cannot be made up without the key.

The keys are in a key file (TOML, made by ``run.py audit keygen``) that the log's stores
never hold: ``active`` names the key new entries are signed with and ``[keys]`` maps key
ids to base64 keys of at least 32 bytes. Entries and heads name their key, so a file with
several keys verifies a log written across a key rotation.

>>> keys = AuditKeys.parse('active = "k1"\\n[keys]\\nk1 = "' + "QUJD" * 11 + '"\\n')
>>> log = chain(keys, [{"kind": "alert", "id": "a1", "record": {}},
...                    {"kind": "alert", "id": "a2", "record": {}}])
>>> head = Head.sign(keys, log[-1].seq, log[-1].mac).to_bytes()
>>> verify_log([e.to_bytes() for e in log], head, keys)
Verdict(ok=True, message='2 entries verified')
>>> edited = log[0].to_bytes().replace(b'"record":{}', b'"record":{"severity":"low"}')
>>> verify_log([edited, log[1].to_bytes()], head, keys).message
'entry 0 (id a1): its MAC does not match its content (edited, or re-chained without the key)'
>>> verify_log([log[0].to_bytes()], head, keys).message
'the log ends at entry 0 but its signed head says 1: entry 1 was removed'
>>> verify_log([e.to_bytes() for e in log], None, keys).message
'the signed head is missing: entries after entry 1 may have been removed'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, NamedTuple

import orjson

SCHEMA_VERSION: Final = "2"  # "1" was a plain SHA-256 chain with an unsigned "seq hash" head
GENESIS: Final = "0" * 64  # the ``prev`` of entry 0, and the ``mac`` of an empty log's head
MIN_KEY_BYTES: Final = 32
KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAC: Final = re.compile(r"[0-9a-f]{64}")
_ENTRY_DOMAIN: Final = b"crm-audit-entry\x00"
_HEAD_DOMAIN: Final = b"crm-audit-head\x00"
_ID_DOMAIN: Final = b"crm-audit-id\x00"


def read_key_file(path: str | Path, kind: str, keygen: str, error: type[ValueError]) -> str:
    """The text of a key file (the audit log's, ``schemas.crypto``'s); a missing or unreadable
    one is ``error``, saying how to create one (``python run.py <keygen> --out PATH``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{kind} key file not found: {path} (create one with "
                    f"`python run.py {keygen} --out {path}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read the {kind} key file {path}: {exc}") from None


class AuditKeyError(ValueError):
    """The key file is missing, unreadable or malformed, or lacks a key that is needed.
    The message names the file and the problem, never key material."""


class BrokenLog(ValueError):
    """A stored log or head that does not verify: a writer must not continue it."""


class UnknownKey(BrokenLog):
    """A head signed with a key the key file does not hold (yet: a rotation under way)."""


# -- keys ------------------------------------------------------------------------------------


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class AuditKeys:
    """The keys of a key file: ``active`` signs what is written, any key verifies what
    names it. ``repr`` shows key ids only.

    >>> keys = AuditKeys.generate("k1")
    >>> keys
    AuditKeys(active='k1', ids=['k1'])
    >>> AuditKeys.parse(keys.to_text()) == keys
    True
    >>> AuditKeys.parse('active = "k2"\\n[keys]\\nk1 = "QUJD"\\n')
    Traceback (most recent call last):
    ...
    schemas.audit.AuditKeyError: the key file: key k1 has 3 bytes; at least 32 are needed
    """

    active: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __repr__(self) -> str:
        return f"AuditKeys(active={self.active!r}, ids={sorted(self.keys)})"

    @classmethod
    def parse(cls, text: str, source: str = "the key file") -> AuditKeys:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AuditKeyError(f"{source}: not TOML ({exc})") from None
        table, active = doc.get("keys"), doc.get("active")
        if not isinstance(table, dict) or not table:
            raise AuditKeyError(f"{source}: no [keys] table")
        keys: dict[str, bytes] = {}
        for kid, encoded in table.items():
            if not KEY_ID.fullmatch(kid):
                raise AuditKeyError(f"{source}: key id {kid[:64]!r} is not 1-64 letters, digits, '_' or '-'")
            try:
                keys[kid] = base64.b64decode(str(encoded), validate=True)
            except ValueError:
                raise AuditKeyError(f"{source}: key {kid} is not base64") from None
            if len(keys[kid]) < MIN_KEY_BYTES:
                raise AuditKeyError(f"{source}: key {kid} has {len(keys[kid])} bytes; "
                                    f"at least {MIN_KEY_BYTES} are needed")
        if not isinstance(active, str) or active not in keys:
            raise AuditKeyError(f"{source}: `active` must name one of the keys in [keys]")
        extra = sorted(set(doc) - {"active", "keys"})
        if extra:
            raise AuditKeyError(f"{source}: unknown setting {extra[0]!r}")
        return cls(active, keys)

    @classmethod
    def load(cls, path: str | Path) -> AuditKeys:
        """The key file at ``path``; any problem is an ``AuditKeyError`` saying what to do."""
        if not str(path):
            raise AuditKeyError("no audit key file: set [audit] key_file (CRM__AUDIT__KEY_FILE); create one "
                                "with `python run.py audit keygen --out FILE`")
        return cls.parse(read_key_file(path, "audit", "audit keygen", AuditKeyError), str(path))

    @classmethod
    def generate(cls, key_id: str | None = None) -> AuditKeys:
        """A new key of 32 random bytes (id ``k-`` and 8 random hex digits unless given)."""
        kid = key_id or f"k-{secrets.token_hex(4)}"
        if not KEY_ID.fullmatch(kid):
            raise AuditKeyError(f"key id {kid[:64]!r} is not 1-64 letters, digits, '_' or '-'")
        return cls(kid, {kid: secrets.token_bytes(MIN_KEY_BYTES)})

    def rotated(self, key_id: str | None = None) -> AuditKeys:
        """These keys and a new one, which becomes the active key."""
        new = AuditKeys.generate(key_id)
        if new.active in self.keys:
            raise AuditKeyError(f"the key file already holds a key {new.active}")
        return AuditKeys(new.active, {**self.keys, **new.keys})

    def to_text(self) -> str:
        lines = ["# HMAC keys of the audit log (python run.py audit keygen). Secret: readable only by",
                 "# the engine and the dashboard, never stored with the log. Keep retired keys: they",
                 "# verify the entries written with them.",
                 f'active = "{self.active}"', "", "[keys]"]
        lines += [f'{kid} = "{base64.b64encode(key).decode()}"' for kid, key in self.keys.items()]
        return "\n".join(lines) + "\n"

    def mac(self, key_id: str, domain: bytes, message: bytes) -> str:
        """HMAC-SHA256 of ``domain + message`` under the key ``key_id`` (``AuditKeyError``
        if the file does not hold it)."""
        key = self.keys.get(key_id)
        if key is None:
            raise AuditKeyError(f"key {key_id}, which the key file does not hold")
        return hmac.new(key, domain + message, hashlib.sha256).hexdigest()

    def id_tag(self, rid: str) -> str:
        """A keyed tag of a record id (the Redis log's set of appended ids holds tags, so a
        writer of the store cannot mark an id appended in advance and keep it out)."""
        return self.mac(self.active, _ID_DOMAIN, rid.encode())[:32]


# -- entries and heads -----------------------------------------------------------------------


def _field(obj: Mapping[str, Any], name: str, tp: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r} missing or not {tp.__name__}")
    return value


@dataclass(frozen=True)
class Entry:
    """One entry of the log (see the module doc)."""

    seq: int
    prev: str
    kind: str
    id: str
    record: Any
    key: str
    mac: str
    schema_version: str = SCHEMA_VERSION

    FIELDS: ClassVar[frozenset[str]] = frozenset(("seq", "prev", "kind", "id", "record", "key", "mac",
                                                 "schema_version"))

    def _body(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev, "kind": self.kind, "id": self.id, "record": self.record,
                "key": self.key, "schema_version": self.schema_version}

    def signed_bytes(self) -> bytes:
        """What ``mac`` is computed over (the canonical entry without ``mac``)."""
        return _canonical(self._body())

    def to_bytes(self) -> bytes:
        return _canonical({**self._body(), "mac": self.mac})

    def expected_mac(self, keys: AuditKeys) -> str:
        return keys.mac(self.key, _ENTRY_DOMAIN, self.signed_bytes())

    @classmethod
    def parse(cls, raw: bytes | str) -> Entry:
        """An entry from its bytes; ``ValueError`` saying why not."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if "hash" in obj and "mac" not in obj:
            raise ValueError("an entry of the unkeyed format of earlier versions (a plain SHA-256 chain), "
                             "which no key verifies")
        unknown = sorted(set(obj) - cls.FIELDS)
        if unknown:
            raise ValueError(f"unexpected field {unknown[0]!r}")
        if "record" not in obj:
            raise ValueError("field 'record' missing")
        if obj.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {obj.get('schema_version')!r}, not {SCHEMA_VERSION!r}")
        entry = cls(_field(obj, "seq", int), _field(obj, "prev", str), _field(obj, "kind", str),
                    _field(obj, "id", str), obj["record"], _field(obj, "key", str), _field(obj, "mac", str))
        if not _MAC.fullmatch(entry.mac) or not _MAC.fullmatch(entry.prev):
            raise ValueError("'mac' or 'prev' is not 64 hex digits")
        return entry


def link(keys: AuditKeys, seq: int, prev: str, kind: str, rid: str, record: Any) -> Entry:
    """The entry number ``seq`` after the entry whose MAC is ``prev``, signed with the active key."""
    unsigned = Entry(seq, prev, kind, rid, record, keys.active, "")
    return Entry(seq, prev, kind, rid, record, keys.active, unsigned.expected_mac(keys))


def chain(keys: AuditKeys, items: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """Entries for ``items`` (each with ``kind``, ``id``, ``record``) from the start of a log."""
    out: list[Entry] = []
    prev = GENESIS
    for seq, item in enumerate(items):
        out.append(link(keys, seq, prev, item["kind"], item["id"], item["record"]))
        prev = out[-1].mac
    return out


@dataclass(frozen=True)
class Head:
    """Where the log ends: the last entry's ``seq`` and ``mac`` (-1 and ``GENESIS`` when it
    is empty), signed (``sig``) with the key ``key``."""

    seq: int
    mac: str
    key: str
    sig: str
    schema_version: str = SCHEMA_VERSION

    def _body(self) -> dict[str, Any]:
        return {"seq": self.seq, "mac": self.mac, "key": self.key, "schema_version": self.schema_version}

    def to_bytes(self) -> bytes:
        return _canonical({**self._body(), "sig": self.sig})

    @classmethod
    def sign(cls, keys: AuditKeys, seq: int, mac: str) -> Head:
        body = cls(seq, mac, keys.active, "")
        return cls(seq, mac, keys.active, keys.mac(keys.active, _HEAD_DOMAIN, _canonical(body._body())))

    @classmethod
    def parse(cls, raw: bytes | str) -> Head:
        """A head from its bytes (surrounding whitespace ignored); ``ValueError`` saying why not."""
        text = raw.strip()
        if not text:
            raise ValueError("empty")
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("not a signed head (not JSON)") from None
        if not isinstance(obj, dict) or set(obj) != {"seq", "mac", "key", "sig", "schema_version"}:
            raise ValueError("not a signed head (wrong fields)")
        if obj["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"schema_version {obj['schema_version']!r}, not {SCHEMA_VERSION!r}")
        head = cls(_field(obj, "seq", int), _field(obj, "mac", str), _field(obj, "key", str), _field(obj, "sig", str))
        if head.seq < -1 or not _MAC.fullmatch(head.mac) or not _MAC.fullmatch(head.sig):
            raise ValueError("not a signed head (bad values)")
        return head

    def check(self, keys: AuditKeys) -> None:
        """``AuditKeyError`` if the key file lacks the head's key, ``ValueError`` if the
        signature does not match."""
        expected = keys.mac(self.key, _HEAD_DOMAIN, _canonical(self._body()))
        if not hmac.compare_digest(expected, self.sig):
            raise ValueError(f"not validly signed with key {self.key} (forged or altered)")


EMPTY_SEQ: Final = -1


def _the(what: str, where: str) -> str:
    return f"{what} ({where})" if where else what


def checked_head(keys: AuditKeys, raw: bytes | str | None, where: str = "") -> Head | None:
    """The stored head ``raw`` (``None``: there is none), parsed and its signature checked;
    ``BrokenLog`` naming ``where`` otherwise."""
    if raw is None:
        return None
    try:
        head = Head.parse(raw)
        head.check(keys)
    except AuditKeyError as exc:
        raise UnknownKey(f"{_the('the head', where)} is signed with {exc}") from None
    except ValueError as exc:
        raise BrokenLog(f"{_the('the head', where)} is {exc}") from None
    return head


# -- appending to a shared log (Redis) -------------------------------------------------------


# The Redis layout: the list KEY (one entry per item), its signed head KEY:head, and the set
# KEY:ids of keyed tags of the ids appended. Every writer (the engine's sink, the dashboard)
# appends with this script.
# KEYS: 1 the log, 2 its head, 3 the set of id tags
# ARGV: 1 the id's tag, 2 the head the entry links to ("" for an empty log), 3 the new head,
#       4 the entry, 5 the entry's seq (the list's length before it)
# Returns 1 appended, 0 the id was appended before, -1 the head moved (re-read and re-link),
# -2 the list's length disagrees with its head (entries removed or added without the key).
REDIS_APPEND_ONCE: Final = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  return 0
end
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[2] then
  return -1
end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[5]) then
  return -2
end
redis.call('RPUSH', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""


def redis_keys(key: str) -> list[str]:
    """The keys ``REDIS_APPEND_ONCE`` takes for the log in the Redis list ``key``."""
    return [key, f"{key}:head", f"{key}:ids"]


class Appender:
    """One writer's side of a log that several writers append to: the next entry and head
    from the stored head, which must be signed and must never go back while this writer
    lives (a head reset, or the log restored from an older copy, raises ``BrokenLog``)."""

    def __init__(self, keys: AuditKeys, where: str) -> None:
        self.keys, self.where = keys, where
        self.seen = EMPTY_SEQ

    def next(self, stored_head: bytes | None, kind: str, rid: str, record: Any) -> tuple[Entry, Head]:
        head = checked_head(self.keys, stored_head, f"{self.where}:head")
        seq, prev = (head.seq, head.mac) if head is not None else (EMPTY_SEQ, GENESIS)
        if seq < self.seen:
            raise BrokenLog(f"the head ({self.where}:head) went back from entry {self.seen} to "
                            f"{'none' if head is None else seq}: the log was cut, deleted or replaced by an older copy")
        entry = link(self.keys, seq + 1, prev, kind, rid, record)
        return entry, Head.sign(self.keys, entry.seq, entry.mac)

    def appended(self, head: Head) -> None:
        self.seen = max(self.seen, head.seq)

    def script_args(self, entry: Entry, stored_head: bytes | None, new_head: Head) -> list[bytes | str | int]:
        """``REDIS_APPEND_ONCE``'s ARGV for appending ``entry``."""
        return [self.keys.id_tag(entry.id), stored_head or b"", new_head.to_bytes(), entry.to_bytes(), entry.seq]


# -- verification ----------------------------------------------------------------------------


class Verdict(NamedTuple):
    """The outcome of a verification: ``ok``, and one line saying what was found."""

    ok: bool
    message: str


def _removed(first: int, last: int) -> str:
    return f"entry {first} was removed" if first == last else f"entries {first}..{last} were removed"


def _ends(last: int) -> str:
    return "the log is empty" if last == EMPTY_SEQ else f"the log ends at entry {last}"


def not_behind(keys: AuditKeys, anchor: bytes | None, last: int, log: str, where: str) -> None:
    """``BrokenLog`` if ``anchor``, a head of the log ``log`` kept in another store
    (``where``), is forged or says the log went further than entry ``last``: a writer must
    not go on (and overwrite the anchor) after a rollback."""
    head = checked_head(keys, anchor, f"anchored in {where}")
    if head is not None and head.seq > last:
        ends = "it is empty" if last == EMPTY_SEQ else f"it ends at entry {last}"
        raise BrokenLog(f"{log}: {ends} but its head anchored in {where} says {head.seq}: "
                        f"{_removed(last + 1, head.seq)}")


def verify_log(entries: Iterable[bytes | str], head: bytes | str | None, keys: AuditKeys,
               anchor: bytes | str | None = None, head_name: str = "",
               anchor_name: str = "the other store") -> Verdict:
    """Check every entry's MAC, ``seq`` and link, then the log's end against the head
    anchored in the other store (if ``anchor`` is given) and against its signed ``head``
    (``None``: missing). Read the head (and the anchor) before the entries: a writer may
    append meanwhile, and entries after the head are accepted if they verify.

    The message names the first bad or missing entry."""
    try:
        stored_head: Head | None = checked_head(keys, head, head_name)
        head_error = ""
    except BrokenLog as exc:
        stored_head, head_error = None, str(exc)
    try:
        stored_anchor = checked_head(keys, anchor, f"anchored in {anchor_name}")
    except BrokenLog as exc:
        return Verdict(False, str(exc))
    wanted = {h.seq for h in (stored_head, stored_anchor) if h is not None}
    macs: dict[int, tuple[str, str]] = {}  # seq -> (mac, id) of the entries the heads name
    prev, last = GENESIS, EMPTY_SEQ
    for position, raw in enumerate(entries):
        try:
            entry = Entry.parse(raw)
        except ValueError as exc:
            return Verdict(False, f"entry {position}: unreadable ({exc})")
        name = f"entry {position} (id {entry.id})"
        try:
            expected = entry.expected_mac(keys)
        except AuditKeyError:
            return Verdict(False, f"{name}: signed with key {entry.key}, which the key file does not hold "
                                  f"(the wrong key file, or a forged entry)")
        if not hmac.compare_digest(expected, entry.mac):
            return Verdict(False, f"{name}: its MAC does not match its content (edited, or re-chained without the key)")
        if entry.to_bytes() != (raw.encode() if isinstance(raw, str) else raw).strip():
            return Verdict(False, f"{name}: not in its canonical form (its bytes were altered)")
        if entry.seq != position:
            return Verdict(False, f"{name}: has seq {entry.seq} where {position} was expected "
                                  f"(an entry was removed or entries were reordered)")
        if entry.prev != prev:
            return Verdict(False, f"{name}: does not link to the entry before it (entries were replaced, "
                                  f"or logs spliced)")
        if position in wanted:
            macs[position] = (entry.mac, entry.id)
        prev, last = entry.mac, position
    if stored_anchor is not None:
        problem = _against(stored_anchor, last, macs, f"its head anchored in {anchor_name}")
        if problem:
            return Verdict(False, problem)
    if head_error:
        return Verdict(False, f"{head_error}: a cut tail cannot be ruled out")
    if stored_head is None:
        after = "" if last == EMPTY_SEQ else f": entries after entry {last} may have been removed"
        return Verdict(False, f"{_the('the signed head', head_name)} is missing{after}")
    problem = _against(stored_head, last, macs, "its signed head")
    if problem:
        return Verdict(False, problem)
    count = last + 1
    later = last - stored_head.seq
    note = f"; the signed head is at entry {stored_head.seq} (the {later} after it were appended since)" \
        if later else ""
    return Verdict(True, f"{count} {'entry' if count == 1 else 'entries'} verified{note}")


def _against(head: Head, last: int, macs: dict[int, tuple[str, str]], what: str) -> str:
    """Why the log (ending at ``last``) disagrees with ``head``, or ``""``."""
    if head.seq > last:
        return f"{_ends(last)} but {what} says {head.seq}: {_removed(last + 1, head.seq)}"
    if head.seq == EMPTY_SEQ:
        return "" if head.mac == GENESIS else f"{what} is for an empty log but names an entry (forged)"
    mac, rid = macs[head.seq]
    if not hmac.compare_digest(mac, head.mac):
        return f"entry {head.seq} (id {rid}): does not match {what} (the log was rewritten up to here)"
    return ""
