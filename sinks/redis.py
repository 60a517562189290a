"""Redis sink: what RMs' apps and the risk team's live views read.

For every record, ``route`` says where it goes (``RedisRoute``): a bounded stream
(``XADD ... MAXLEN ~``), optionally fields of a hash and a pub/sub channel. Keys come from
``schemas.redis_keys`` (customer and RM ids percent-encoded, so no id can name another
key). The default routing (``default_route``) sends

- an alert to the ``{prefix}alerts`` stream, to the customer's hash ``{prefix}customer:{id}``
  (the latest fraud score and alert, and one ``open:{alert key}`` field per open alert)
  and to the ``{prefix}alerts:live`` channel for live views;
- a record with an ``rm_id`` and a ``prompt_id`` (a next-best-action prompt) to the RM's
  stream ``{prefix}rm:{rm_id}:prompts``;
- a customer state to the customer's hash (its scores).
- a fraud model report to the ``{prefix}models`` hash (``report``: the latest), and a change
  of champion model to the ``{prefix}models:changes`` stream and that hash (``change``).

Delivery: at least once from the engine, exactly once into Redis. One Lua script writes a
record only if its id was not delivered before: it checks the marker
``{prefix}delivered:{id}``, checks that the keys it writes are of the right type (or do not
exist yet), writes, and sets the marker last, in one atomic script. So the duplicates that
retries and recovery replay produce never reach a stream, a hash or a subscriber twice while
the id's marker lives (``dedup_ttl_s``, a week by default), and a write that fails leaves no
marker: it is retried, or refused, never taken for a duplicate. A key of the wrong type (or
keys under the prefix that follow another layout, ``{prefix}layout``) refuses that record
for good: it goes to the dead letter with the reason, and the rest of its batch is
delivered. Back-pressure, retries and the dead letter come from
``sinks.delivery.BufferedSink``.

``RedisEventsSink`` (with ``[redis] recent_events``) keeps each customer's latest input
events, summarised (``schemas.outputs.EventSummary``), in a capped list
``{prefix}customer:{id}:events``, newest first, for the dashboard's timelines. It is a
sibling of ``RedisSink`` rather than one more route: an event is far more frequent than an
alert, and a week-long delivered marker per event would cost more memory than the lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.outputs import Alert, CustomerState, EventSummary, ModelChange, ModelReport
from schemas.redis_keys import LAYOUT_VERSION, RedisKeys
from sinks.base import Record
from sinks.delivery import BufferedSink, DeadLetterOut, RetryPolicy, record_id


# Both scripts first check the layout the keys under the prefix follow (set by the first
# writer) and the type of every key they write, before any write: a script that fails half
# way keeps what it wrote, so nothing may fail after the first write.
def _check_layout(key: str, version: str) -> str:
    return f"""
local layout = redis.call('GET', {key})
if layout and layout ~= {version} then
  return redis.error_reply('LAYOUT the keys under this prefix follow Redis key layout ' .. layout ..
                           ', this writer uses layout ' .. {version})
end
"""


def _check_type(key: str, expected: str, what: str) -> str:
    return f"""
if {key} ~= '' then
  local found = redis.call('TYPE', {key})['ok']
  if found ~= 'none' and found ~= '{expected}' then
    return redis.error_reply('WRONGTYPE the {what} key holds a ' .. found .. ', not a {expected}')
  end
end
"""


# KEYS: 1 delivered marker, 2 stream ("" for none), 3 hash ("" for none), 4 layout
# ARGV: 1 ttl ms, 2 stream maxlen, 3 payload, 4 channel ("" for none), 5 record id,
#       6 layout version, 7.. hash field/value pairs
_WRITE_ONCE = _check_layout("KEYS[4]", "ARGV[6]") + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
""" + _check_type("KEYS[2]", "stream", "stream") + _check_type("KEYS[3]", "hash", "customer hash") + """
if not layout then
  redis.call('SET', KEYS[4], ARGV[6])
end
if KEYS[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[5], 'data', ARGV[3])
end
if KEYS[3] ~= '' and #ARGV > 6 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 7))
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[3])
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""

#: Errors of the scripts that no retry can cure: the record is refused (dead letter).
_REFUSALS = ("WRONGTYPE", "LAYOUT")


def _connect(url: str, timeout_s: float, script: str) -> tuple[Any, Any]:
    """A client for ``url`` and ``script`` registered on it (no round trip yet)."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise RuntimeError("the Redis sink needs the redis package (requirements.txt)") from exc
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return client, client.register_script(script)


def _outcomes(records: list[Record], results: list[Any]) -> tuple[int, list[tuple[Record, str]]]:
    """Of one pipelined batch of script calls: how many were duplicates (0: the id was
    delivered before) and which records were refused for good, with the reason. Any other
    error is raised, so the whole batch is retried (what was written is then a duplicate)."""
    duplicates, refused = 0, []
    for record, result in zip(records, results, strict=True):
        if isinstance(result, Exception):
            if not str(result).startswith(_REFUSALS):
                raise result
            refused.append((record, str(result)))
        elif result == 0:
            duplicates += 1
    return duplicates, refused


@dataclass(frozen=True)
class RedisRoute:
    """Where one record goes in Redis (full keys, from ``schemas.redis_keys``)."""

    stream: str = ""
    maxlen: int = 10_000
    hash_key: str = ""
    hash_fields: dict[str, str] = field(default_factory=dict)
    channel: str = ""


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
    if isinstance(record, Alert):
        payload = record.to_bytes().decode("utf-8")
        return RedisRoute(
            stream=keys.alerts(), maxlen=limits.alerts_maxlen, hash_key=keys.customer(record.customer_id),
            hash_fields={"fraud_score": repr(record.score), "last_alert": payload,
                         "last_alert_ts": record.event_ts, f"open:{alert_key(record)}": payload},
            channel=keys.alerts_channel())
    if isinstance(record, CustomerState):
        return RedisRoute(hash_key=keys.customer(record.customer_id), hash_fields={
            "churn_score": repr(record.churn_score), "fraud_risk": repr(record.fraud_risk),
            "last_event_ts": record.last_event_ts, "state": record.to_bytes().decode("utf-8")})
    if isinstance(record, ModelReport):
        return RedisRoute(hash_key=keys.models(), hash_fields={"report": record.to_bytes().decode("utf-8")})
    if isinstance(record, ModelChange):
        return RedisRoute(stream=keys.model_changes(), maxlen=limits.prompts_maxlen, hash_key=keys.models(),
                          hash_fields={"change": record.to_bytes().decode("utf-8")})
    rm_id, prompt_id = getattr(record, "rm_id", None), getattr(record, "prompt_id", None)
    if isinstance(rm_id, str) and isinstance(prompt_id, str):
        return RedisRoute(stream=keys.rm_prompts(rm_id), maxlen=limits.prompts_maxlen)
    return None


Router = Callable[[Record, RedisLimits, RedisKeys], RedisRoute | None]


class _ScriptedSink(BufferedSink):
    """A buffered Redis sink that writes each record with one call of its Lua ``script``, a
    batch in one pipelined round trip (``_settle``)."""

    def __init__(self, name: str, script: str, url: str, dead_letters: DeadLetterOut, prefix: str,
                 socket_timeout_s: float, capacity: int, policy: RetryPolicy | None, batch_size: int) -> None:
        super().__init__(name, dead_letters, capacity=capacity, batch_size=batch_size, policy=policy)
        self._url, self._script_source = url, script
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self._socket_timeout_s = socket_timeout_s
        self._client: Any = None
        self._script: Any = None
        self.duplicates = 0  # records delivered before (not written again)

    def connect(self) -> None:
        self._client, self._script = _connect(self._url, self._socket_timeout_s, self._script_source)

    def _settle(self, pipe: Any, records: list[Record]) -> list[tuple[Record, str]] | None:
        """Run the pipelined calls of ``records``; the records refused for good."""
        if not records:
            return None
        duplicates, refused = _outcomes(records, pipe.execute(raise_on_error=False))
        self.duplicates += duplicates
        return refused

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RedisSink(_ScriptedSink):
    """Write records to Redis streams, hashes and a channel, each id at most once."""

    def __init__(self, url: str, dead_letters: DeadLetterOut, prefix: str = "crm:",
                 limits: RedisLimits | None = None, route: Router = default_route,
                 socket_timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, batch_size: int = 100) -> None:
        super().__init__("redis", _WRITE_ONCE, url, dead_letters, prefix, socket_timeout_s, capacity, policy,
                         batch_size)
        self.limits = limits or RedisLimits()
        self._route = route

    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        pipe = self._client.pipeline(transaction=False)
        ttl_ms = str(int(self.limits.dedup_ttl_s * 1000))
        routed: list[Record] = []
        for record in records:
            route = self._route(record, self.limits, self.keys)
            if route is None:
                continue
            rid = record_id(record)
            fields = [item for pair in route.hash_fields.items() for item in pair]
            self._script(keys=[self.keys.delivered(rid), route.stream, route.hash_key, self.keys.layout()],
                         args=[ttl_ms, str(route.maxlen), record.to_bytes(), route.channel, rid, LAYOUT_VERSION,
                               *fields],
                         client=pipe)
            routed.append(record)
        return self._settle(pipe, routed)

# KEYS: 1 the customer's list, 2 layout. ARGV: 1 the summary, 2 the list's length,
# 3 layout version.
# A summary already in the list is not pushed again: the events a restart replays from the
# last snapshot were written before the crash, and are still there unless more than the
# list's length of newer events followed them (then they are pushed again, at the head).
_PUSH_RECENT = _check_layout("KEYS[2]", "ARGV[3]") + _check_type("KEYS[1]", "list", "recent events") + """
if not layout then
  redis.call('SET', KEYS[2], ARGV[3])
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

    def __init__(self, url: str, dead_letters: DeadLetterOut, length: int, prefix: str = "crm:",
                 socket_timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, batch_size: int = 500) -> None:
        if length < 1:
            raise ValueError(f"recent events: the list length must be at least 1, not {length}")
        super().__init__("redis_events", _PUSH_RECENT, url, dead_letters, prefix, socket_timeout_s, capacity,
                         policy, batch_size)
        self.length = length

    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        pipe = self._client.pipeline(transaction=False)
        length = str(self.length)
        pushed: list[Record] = []
        for record in records:
            if isinstance(record, EventSummary):
                self._script(keys=[self.keys.customer_events(record.customer_id), self.keys.layout()],
                             args=[record.to_bytes(), length, LAYOUT_VERSION], client=pipe)
                pushed.append(record)
        return self._settle(pipe, pushed)
