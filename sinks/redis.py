"""Redis sink: what RMs' apps and the risk team's live views read.

For every record, ``route`` says where it goes (``RedisRoute``): one ``RedisWrite`` per
Redis Cluster hash slot it touches, each a bounded stream (``XADD ... MAXLEN ~``),
optionally fields of a hash and a pub/sub channel. Keys come from ``schemas.redis_keys``
(ids percent-encoded, so no id can name another key, and hash-tagged, so each write stays
in one slot). The default routing (``default_route``) sends

- an alert to the customer's hash ``{prefix}customer:{{id}}`` (the latest fraud score and
  alert, and one ``open:{alert key}`` field per open alert), then to the
  ``{prefix}{engine}:alerts`` stream and the ``{prefix}alerts:live`` channel for live views;
- a record with an ``rm_id`` and a ``prompt_id`` (a next-best-action prompt) to the RM's
  stream ``{prefix}rm:{{rm_id}}:prompts``;
- a customer state to the customer's hash (its scores);
- a fraud model report to the ``{prefix}{engine}:models`` hash (``report``: the latest), and
  a change of champion model to the ``{prefix}{engine}:models:changes`` stream and that
  hash (``change``).

Delivery: at least once from the engine, exactly once into Redis. Each ``RedisWrite`` is
one Lua script call, in one slot (but for the guard below), that writes only if its own
delivered marker is absent: it checks the marker, checks that the keys it writes are of
the right type (or do not exist yet), writes, and sets the marker last, atomically. So the
duplicates that retries and recovery replay produce never reach a stream, a hash or a
subscriber twice while the markers live (``dedup_ttl_s``, a week by default), and a write
that fails leaves no marker: it is retried, or refused, never taken for a duplicate.

A record with writes in two slots (an alert: its customer's hash, then the global stream
and channel) is written in that order, the second only once the first has succeeded or
was found delivered before: on a cluster, in the next round trip; on one node (a single
Redis, or the master behind Sentinels), in the same pipelined round trip, by a call that
first checks the first write's marker and writes nothing without it. Each write is
idempotent on its own, so whatever stops the sink between them (a crash, an outage, a lost
reply) is completed by the retry or the replay of the whole record: the first write is
then a duplicate and skipped, the second is written. A record counts as a duplicate only
if every write was. The global stream is last because it is what readers follow (the
dashboard's indexer): an alert in it always has its customer's hash written already.

A key of the wrong type refuses that record for good: it goes to the dead letter with the
reason, and the rest of its batch is delivered. A refused first write leaves nothing of
the record written; a refused second write (the alerts stream replaced by a key of another
type, so every alert) leaves the customer's hash written. Keys under the prefix that
follow another layout (``{prefix}layout``, the first writer sets it; read before a batch,
at most every ``LAYOUT_RECHECK_S``) refuse the whole batch. Back-pressure, retries and the
dead letter come from ``sinks.delivery.BufferedSink``. Clients come from
``sinks.redis_client``: a single Redis, a Redis Cluster or a master behind Sentinels.

``RedisEventsSink`` (with ``[redis] recent_events``) keeps each customer's latest input
events, summarised (``schemas.outputs.EventSummary``), in a capped list
``{prefix}customer:{{id}}:events``, newest first, for the dashboard's timelines. It is a
sibling of ``RedisSink`` rather than one more route: an event is far more frequent than an
alert, and a week-long delivered marker per event would cost more memory than the lists.

With a ``sealer`` (``[crypto] enabled``), both sinks write each record's JSON with its
personal fields sealed (``schemas.crypto``): the stream entry, the channel message and
every hash field that holds the record, and each timeline summary. The envelopes are
deterministic per record id, so a replayed summary is still found in its list. Key names
(customer and RM ids) are not sealed: see the README (Encryption at rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from schemas.crypto import Sealer
from schemas.outputs import POPULATION_ALERTS, Alert, CustomerState, EventSummary, ModelChange, ModelReport
from schemas.redis_keys import LAYOUT_VERSION, RedisKeys
from schemas.redis_url import RedisEndpoint
from sinks.base import Record
from sinks.delivery import BufferedSink, DeadLetterOut, RetryPolicy, record_id
from sinks.redis_client import connect, is_cluster, load_scripts

# Both scripts check the type of every key they write before any write: a script that
# fails half way keeps what it wrote, so nothing may fail after the first write. Every
# key a script touches is one of its KEYS (never an empty name: on a cluster "" has a slot
# of its own), so the cluster routes it to the one slot they share.
_WRONG_TYPE = """
local function wrong_type(key, expected, what)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= expected then
    return 'WRONGTYPE the ' .. what .. ' key holds a ' .. found .. ', not a ' .. expected
  end
  return nil
end
"""

# KEYS: 1 delivered marker, then the stream if ARGV[6] == '1', then the hash if ARGV[7] == '1',
#       then, if ARGV[8] == '1', the record's previous write's marker (a guard: without it,
#       this write is not made and the script returns -1)
# ARGV: 1 ttl ms, 2 stream maxlen, 3 payload, 4 channel ("" for none), 5 record id,
#       6 has a stream, 7 has a hash, 8 has a guard, 9.. hash field/value pairs
_WRITE_ONCE = _WRONG_TYPE + """
local last = #KEYS
if ARGV[8] == '1' then
  if redis.call('EXISTS', KEYS[last]) == 0 then
    return -1
  end
  last = last - 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local stream, hash = nil, nil
if ARGV[6] == '1' then
  stream = KEYS[2]
end
if ARGV[7] == '1' then
  hash = KEYS[last]
end
local problem = (stream and wrong_type(stream, 'stream', 'stream')) or (hash and wrong_type(hash, 'hash', 'hash'))
if problem then
  return redis.error_reply(problem)
end
if stream then
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[5], 'data', ARGV[3])
end
if hash and #ARGV > 8 then
  redis.call('HSET', hash, unpack(ARGV, 9))
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[3])
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""

#: How long (seconds) a key layout found right is trusted before it is read again.
LAYOUT_RECHECK_S = 10.0

#: Errors of the scripts that no retry can cure: the record is refused (dead letter).
_REFUSALS = ("WRONGTYPE",)


class _ScriptsLost(ConnectionError):
    """A master answered NOSCRIPT (restarted, or a replica promoted): the scripts were
    loaded again and the batch is retried."""


def _layout_problem(client: Any, keys: RedisKeys) -> str | None:
    """Why nothing may be written under the prefix (it follows another key layout), if so;
    the first writer sets the layout."""
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.layout(), LAYOUT_VERSION, nx=True)
    pipe.get(keys.layout())
    found = pipe.execute()[1]
    layout = found.decode() if isinstance(found, bytes) else str(found)
    if layout == LAYOUT_VERSION:
        return None
    return (f"LAYOUT the keys under {keys.prefix!r} follow Redis key layout {layout}, this writer uses layout "
            f"{LAYOUT_VERSION} (README: Redis key layout)")


@dataclass(frozen=True)
class RedisWrite:
    """One slot's share of a record (full keys, from ``schemas.redis_keys``): written once,
    by its own delivered ``marker`` (a key in the same slot)."""

    marker: str
    stream: str = ""
    maxlen: int = 10_000
    hash_key: str = ""
    hash_fields: dict[str, str] = field(default_factory=dict)
    channel: str = ""


@dataclass(frozen=True)
class RedisRoute:
    """Where one record goes in Redis: its writes, in the order they are made."""

    writes: tuple[RedisWrite, ...]


@dataclass(frozen=True)
class RedisLimits:
    """Stream bounds (approximate, ``MAXLEN ~``) and how long delivered ids are remembered."""

    alerts_maxlen: int = 100_000
    prompts_maxlen: int = 10_000
    dedup_ttl_s: float = 7 * 86400.0


def alert_key(alert: Alert) -> str:
    """The key under which an alert is open in its customer's hash: its dedup key when it
    has one (a later revision replaces the earlier), else its id."""
    return getattr(alert, "group_key", None) or getattr(alert, "dedup_key", None) or alert.alert_id


def default_route(record: Record, limits: RedisLimits, keys: RedisKeys) -> RedisRoute | None:
    """Alerts, prompts and customer states (see the module doc); ``None`` skips a record."""
    rid = record_id(record)
    if isinstance(record, Alert):
        payload = record.to_bytes().decode("utf-8")
        customer = record.customer_id
        if record.type in POPULATION_ALERTS:  # about no one customer (fairness_drift): the alert stream only
            return RedisRoute((RedisWrite(keys.delivered(rid), stream=keys.alerts(), maxlen=limits.alerts_maxlen,
                                          channel=keys.alerts_channel()),))
        return RedisRoute((
            RedisWrite(keys.customer_delivered(customer, rid), hash_key=keys.customer(customer),
                       hash_fields={"fraud_score": repr(record.score), "last_alert": payload,
                                    "last_alert_ts": record.event_ts, f"open:{alert_key(record)}": payload}),
            RedisWrite(keys.delivered(rid), stream=keys.alerts(), maxlen=limits.alerts_maxlen,
                       channel=keys.alerts_channel())))
    if isinstance(record, CustomerState):
        customer = record.customer_id
        return RedisRoute((RedisWrite(keys.customer_delivered(customer, rid), hash_key=keys.customer(customer),
                                      hash_fields={"churn_score": repr(record.churn_score),
                                                   "fraud_risk": repr(record.fraud_risk),
                                                   "last_event_ts": record.last_event_ts,
                                                   "state": record.to_bytes().decode("utf-8")}),))
    if isinstance(record, ModelReport):
        return RedisRoute((RedisWrite(keys.delivered(rid), hash_key=keys.models(),
                                      hash_fields={"report": record.to_bytes().decode("utf-8")}),))
    if isinstance(record, ModelChange):
        return RedisRoute((RedisWrite(keys.delivered(rid), stream=keys.model_changes(),
                                      maxlen=limits.prompts_maxlen, hash_key=keys.models(),
                                      hash_fields={"change": record.to_bytes().decode("utf-8")}),))
    rm_id, prompt_id = getattr(record, "rm_id", None), getattr(record, "prompt_id", None)
    if isinstance(rm_id, str) and isinstance(prompt_id, str):
        return RedisRoute((RedisWrite(keys.rm_delivered(rm_id, rid), stream=keys.rm_prompts(rm_id),
                                      maxlen=limits.prompts_maxlen),))
    return None


Router = Callable[[Record, RedisLimits, RedisKeys], RedisRoute | None]


class _ScriptedSink(BufferedSink):
    """A buffered Redis sink that writes with its Lua ``script``, a batch's calls in one
    pipelined round trip per step (``_call_script``). The client is made on the first delivery
    (a cluster's is read from its nodes then), so a Redis down at start is retried."""

    def __init__(self, name: str, script: str, url: str | RedisEndpoint, dead_letters: DeadLetterOut, prefix: str,
                 socket_timeout_s: float, capacity: int, policy: RetryPolicy | None, batch_size: int) -> None:
        super().__init__(name, dead_letters, capacity=capacity, batch_size=batch_size, policy=policy)
        self._url, self._script_source = url, script
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self._socket_timeout_s = socket_timeout_s
        self._client: Any = None
        self._script: Any = None
        self._layout_ok_until = -math.inf  # until when the layout found right is trusted (monotonic)
        self.duplicates = 0  # records delivered before (not written again)

    def connect(self) -> None:
        self._client = self._script = None
        self._layout_ok_until = -math.inf

    def _ready(self) -> Any:
        """The client, made and its script loaded on first use; the layout checked."""
        if self._client is None:
            client = connect(self._url, self._socket_timeout_s)
            script = client.register_script(self._script_source)
            load_scripts(client, script)
            self._client, self._script = client, script
        return self._client

    def _call_script(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """The results of the script called with each (keys, args), in one pipeline (on a
        cluster, one per master, in parallel); errors are returned, not raised, except
        NOSCRIPT (``_ScriptsLost``, after loading the script again)."""
        if not calls:
            return []
        import redis

        pipe = self._ready().pipeline(transaction=False)
        for keys, args in calls:
            # EVALSHA sent as a plain command: redis-py's cluster pipeline has no
            # script support, but routes EVALSHA by its keys like any command.
            pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        results = list(pipe.execute(raise_on_error=False))
        if any(isinstance(result, redis.exceptions.NoScriptError) for result in results):
            load_scripts(self._client, self._script)
            raise _ScriptsLost(f"{self.name}: a Redis master had lost the sink's script; loaded again")
        return results

    def _layout_refusal(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        """Every record refused if the prefix follows another layout, else None. A layout
        found right is trusted for ``LAYOUT_RECHECK_S`` on the same client: the check is a
        round trip of its own, and a delivery is one or two."""
        client = self._ready()
        if self._monotonic() < self._layout_ok_until:
            return None
        problem = _layout_problem(client, self.keys)
        if problem:
            return [(record, problem) for record in records]
        self._layout_ok_until = self._monotonic() + LAYOUT_RECHECK_S
        return None

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._layout_ok_until = -math.inf


def _refusal(result: Any) -> str | None:
    """The reason a script's ``result`` refuses its record for good; other errors raise
    (the batch is retried: what was written is then a duplicate)."""
    if not isinstance(result, Exception):
        return None
    if str(result).startswith(_REFUSALS):
        return str(result)
    raise result


class RedisSink(_ScriptedSink):
    """Write records to Redis streams, hashes and a channel, each id at most once."""

    def __init__(self, url: str | RedisEndpoint, dead_letters: DeadLetterOut, prefix: str = "crm:",
                 limits: RedisLimits | None = None, route: Router = default_route,
                 socket_timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, batch_size: int = 100, sealer: Sealer | None = None) -> None:
        super().__init__("redis", _WRITE_ONCE, url, dead_letters, prefix, socket_timeout_s, capacity, policy,
                         batch_size)
        self.limits = limits or RedisLimits()
        self._route = route
        self._sealer = sealer

    def _sealed(self, record: Record, route: RedisRoute) -> tuple[RedisRoute, bytes]:
        """``route`` and the record's payload with its personal fields sealed: every hash
        field that holds the record's JSON holds the sealed JSON instead."""
        payload = record.to_bytes()
        if self._sealer is None:
            return route, payload
        sealed = orjson.dumps(self._sealer.seal_record(orjson.loads(payload), record_id(record)))
        if sealed == payload:
            return route, payload
        plain, text = payload.decode("utf-8"), sealed.decode("utf-8")
        return RedisRoute(tuple(replace(write, hash_fields={k: text if v == plain else v
                                                            for k, v in write.hash_fields.items()})
                                for write in route.writes)), sealed

    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        routed = [(record, *self._sealed(record, route)) for record in records
                  if (route := self._route(record, self.limits, self.keys)) is not None]
        if not routed:
            return None
        if (refused_all := self._layout_refusal([record for record, _, _ in routed])) is not None:
            return refused_all
        ttl_ms = str(int(self.limits.dedup_ttl_s * 1000))
        refused: dict[int, str] = {}
        wrote: set[int] = set()
        # A record's later write only once its previous one is in (see the module doc). On one
        # node (a single Redis, or the master behind Sentinels) every step goes in one
        # pipelined round trip, each later write guarded by its previous write's marker; a
        # cluster's script cannot read another slot's key, so there it is a round trip a step.
        steps = max(len(route.writes) for _, route, _ in routed)
        guarded = not is_cluster(self._ready())
        step = 0
        while step < steps:
            upto = steps if guarded else step + 1
            todo = [(i, k) for k in range(step, upto) for i, (_, route, _) in enumerate(routed)
                    if i not in refused and k < len(route.writes)]
            calls = []
            for i, k in todo:
                record, route, payload = routed[i]
                write = route.writes[k]
                guard = route.writes[k - 1].marker if guarded and k > 0 else None
                keys = [write.marker, *([write.stream] if write.stream else []),
                        *([write.hash_key] if write.hash_key else []), *([guard] if guard else [])]
                fields = [item for pair in write.hash_fields.items() for item in pair]
                calls.append((keys, [ttl_ms, str(write.maxlen), payload, write.channel, record_id(record),
                                     "1" if write.stream else "0", "1" if write.hash_key else "0",
                                     "1" if guard else "0", *fields]))
            for (i, _), result in zip(todo, self._call_script(calls), strict=True):
                if i in refused:  # its earlier write was refused: this one was not made (-1)
                    continue
                if (reason := _refusal(result)) is not None:
                    refused[i] = reason
                elif result == 1:
                    wrote.add(i)
                elif result == -1:  # the earlier write in the same round trip neither made nor found
                    raise ConnectionError(f"{self.name}: a write's previous write is missing; retried")
            step = upto
        self.duplicates += sum(1 for i in range(len(routed)) if i not in refused and i not in wrote)
        return [(routed[i][0], reason) for i, reason in sorted(refused.items())] or None

# KEYS: 1 the customer's list. ARGV: 1 the summary, 2 the list's length.
# A summary already in the list is not pushed again: the events a restart replays from the
# last snapshot were written before the crash, and are still there unless more than the
# list's length of newer events followed them (then they are pushed again, at the head).
_PUSH_RECENT = _WRONG_TYPE + """
local problem = wrong_type(KEYS[1], 'list', 'recent events')
if problem then
  return redis.error_reply(problem)
end
local length = tonumber(ARGV[2])
for _, held in ipairs(redis.call('LRANGE', KEYS[1], 0, length - 1)) do
  if held == ARGV[1] then
    return 0
  end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, length - 1)
return 1
"""


class RedisEventsSink(_ScriptedSink):
    """Each customer's ``length`` latest events in ``{prefix}customer:{id}:events``, newest
    first (in the order the engine accepted them), one pipelined round trip per batch.

    Delivery: at least once from the engine; an event still in its customer's list is not
    pushed twice, so retries and the replay after a restart leave the list as it was (a
    replayed event that had already been trimmed away comes back once, at the head). Records
    other than ``EventSummary`` are ignored."""

    def __init__(self, url: str | RedisEndpoint, dead_letters: DeadLetterOut, length: int, prefix: str = "crm:",
                 socket_timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, batch_size: int = 500, sealer: Sealer | None = None) -> None:
        if length < 1:
            raise ValueError(f"recent events: the list length must be at least 1, not {length}")
        super().__init__("redis_events", _PUSH_RECENT, url, dead_letters, prefix, socket_timeout_s, capacity,
                         policy, batch_size)
        self.length = length
        self._sealer = sealer

    def _payload(self, summary: EventSummary) -> bytes:
        if self._sealer is None:
            return summary.to_bytes()
        return orjson.dumps(self._sealer.seal_record(summary.to_dict(), summary.event_id))

    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        summaries = [record for record in records if isinstance(record, EventSummary)]
        if not summaries:
            return None
        if (refused_all := self._layout_refusal(list(summaries))) is not None:
            return refused_all
        length = str(self.length)
        results = self._call_script([([self.keys.customer_events(s.customer_id)], [self._payload(s), length])
                                     for s in summaries])
        refused: list[tuple[Record, str]] = []
        for summary, result in zip(summaries, results, strict=True):
            if (reason := _refusal(result)) is not None:
                refused.append((summary, reason))
            elif result == 0:
                self.duplicates += 1
        return refused or None


# KEYS: 1 a list. ARGV: 1 n, 2..n+1 the items read, n+2..2n+1 their new values.
# Sets the items only if the list still holds what was read (else -1: read it again).
_RESEAL_LIST = """
local n = tonumber(ARGV[1])
local held = redis.call('LRANGE', KEYS[1], 0, -1)
if #held ~= n then
  return -1
end
for i = 1, n do
  if held[i] ~= ARGV[1 + i] then
    return -1
  end
end
for i = 1, n do
  if ARGV[1 + i] ~= ARGV[1 + n + i] then
    redis.call('LSET', KEYS[1], i - 1, ARGV[1 + n + i])
  end
end
return 1
"""

# KEYS: 1 a hash. ARGV: (field, value read, new value) triples. All set, or none (-1) if a
# field changed since it was read.
_RESEAL_HASH = """
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    return -1
  end
end
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
end
return 1
"""


def _resealed(sealer: Sealer, raw: bytes, context_field: str) -> bytes | None:
    """``raw`` (a stored record's JSON) sealed again with the active key, or ``None`` if it
    holds no envelope of another key (or is not JSON)."""
    if b"pii1." not in raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not sealer.needs_reseal(value):
        return None
    context = value.get(context_field, "") if isinstance(value, dict) else ""
    return orjson.dumps(sealer.reseal(value, context if isinstance(context, str) else ""))


def reseal_stored(url: str | RedisEndpoint, prefix: str, sealer: Sealer, socket_timeout_s: float = 5.0,
                  attempts: int = 10) -> tuple[int, int]:
    """Seal again with ``sealer``'s active key what the engine stored under ``prefix``: the
    customers' hashes and timelines (``run.py keys rotate --reencrypt``). Each key is
    rewritten by a script that first checks it still holds what was read (a sink writing
    meanwhile: read again). Returns (values, keys) rewritten; ``schemas.crypto.CannotDecrypt``
    if a value does not open with the key file. Streams are not rewritten (entries are
    immutable; they age out by ``MAXLEN``)."""
    client = connect(url, socket_timeout_s)
    try:
        keys = RedisKeys(prefix)
        lists, hashes = client.register_script(_RESEAL_LIST), client.register_script(_RESEAL_HASH)
        values = changed = 0
        for key in list(client.scan_iter(match=keys.customers_pattern(), count=1000)):
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            for _ in range(attempts):
                if kind == "list":
                    held = client.lrange(key, 0, -1)
                    new = [_resealed(sealer, item, "event_id") or item for item in held]
                    n = sum(1 for a, b in zip(held, new, strict=True) if a != b)
                    if not n or lists(keys=[key], args=[len(held), *held, *new]) == 1:
                        break
                elif kind == "hash":
                    triples = [(f, v, s) for f, v in client.hgetall(key).items()
                               if (s := _resealed(sealer, v, "alert_id")) is not None]
                    n = len(triples)
                    if not n or hashes(keys=[key], args=[x for t in triples for x in t]) == 1:
                        break
                else:
                    n = 0
                    break
            else:
                raise ConnectionError(f"{key!r} kept changing while it was re-encrypted; run again")
            values += n
            changed += 1 if n else 0
        return values, changed
    finally:
        client.close()
