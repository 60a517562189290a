"""Redis sink: what RMs' apps and the risk team's live views read.

For every record, ``route`` says where it goes (``RedisRoute``): a bounded stream
(``XADD ... MAXLEN ~``), optionally fields of a hash and a pub/sub channel. The default
routing (``default_route``) sends

- an alert to the ``{prefix}alerts`` stream, to the customer's hash ``{prefix}customer:{id}``
  (the latest fraud score and alert, and one ``open:{alert key}`` field per open alert)
  and to the ``{prefix}alerts:live`` channel for live views;
- a record with an ``rm_id`` and a ``prompt_id`` (a next-best-action prompt) to the RM's
  stream ``{prefix}rm:{rm_id}:prompts``;
- a customer state to the customer's hash (its scores).

Delivery: at least once from the engine, exactly once into Redis. One Lua script writes a
record only if its id was not delivered before (``SET {prefix}delivered:{id} NX PX ttl``
and the writes are one atomic script), so the duplicates that retries and recovery replay
produce never reach a stream, a hash or a subscriber twice while the id's marker lives
(``dedup_ttl_s``, a week by default). Back-pressure, retries and the dead letter come from
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

from schemas.outputs import Alert, CustomerState, EventSummary
from sinks.base import Record
from sinks.delivery import BufferedSink, DeadLetterOut, RetryPolicy, record_id

# KEYS: 1 delivered marker, 2 stream, 3 hash ("" for none)
# ARGV: 1 ttl ms, 2 stream maxlen, 3 payload, 4 channel ("" for none), 5 record id,
#       6.. hash field/value pairs
_WRITE_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
if KEYS[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[5], 'data', ARGV[3])
end
if KEYS[3] ~= '' and #ARGV > 5 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 6))
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[3])
end
return 1
"""


def _connect(url: str, timeout_s: float, script: str) -> tuple[Any, Any]:
    """A client for ``url`` and ``script`` registered on it (no round trip yet)."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise RuntimeError("the Redis sink needs the redis package (requirements.txt)") from exc
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return client, client.register_script(script)


@dataclass(frozen=True)
class RedisRoute:
    """Where one record goes in Redis (keys without the prefix)."""

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


def default_route(record: Record, limits: RedisLimits) -> RedisRoute | None:
    """Alerts, prompts and customer states (see the module doc); ``None`` skips a record."""
    if isinstance(record, Alert):
        payload = record.to_bytes().decode("utf-8")
        return RedisRoute(
            stream="alerts", maxlen=limits.alerts_maxlen, hash_key=f"customer:{record.customer_id}",
            hash_fields={"fraud_score": repr(record.score), "last_alert": payload,
                         "last_alert_ts": record.event_ts, f"open:{alert_key(record)}": payload},
            channel="alerts:live")
    if isinstance(record, CustomerState):
        return RedisRoute(hash_key=f"customer:{record.customer_id}", hash_fields={
            "churn_score": repr(record.churn_score), "fraud_risk": repr(record.fraud_risk),
            "last_event_ts": record.last_event_ts, "state": record.to_bytes().decode("utf-8")})
    rm_id, prompt_id = getattr(record, "rm_id", None), getattr(record, "prompt_id", None)
    if isinstance(rm_id, str) and isinstance(prompt_id, str):
        return RedisRoute(stream=f"rm:{rm_id}:prompts", maxlen=limits.prompts_maxlen)
    return None


Router = Callable[[Record, RedisLimits], RedisRoute | None]


class RedisSink(BufferedSink):
    """Write records to Redis streams, hashes and a channel, each id at most once."""

    def __init__(self, url: str, dead_letters: DeadLetterOut, prefix: str = "crm:",
                 limits: RedisLimits | None = None, route: Router = default_route,
                 socket_timeout_s: float = 5.0, capacity: int = 10_000,
                 policy: RetryPolicy | None = None, batch_size: int = 100) -> None:
        super().__init__("redis", dead_letters, capacity=capacity, batch_size=batch_size, policy=policy)
        self._url = url
        self.prefix = prefix
        self.limits = limits or RedisLimits()
        self._route = route
        self._socket_timeout_s = socket_timeout_s
        self._client: Any = None
        self._script: Any = None
        self.duplicates = 0  # records whose id had been delivered before (not written again)

    def connect(self) -> None:
        self._client, self._script = _connect(self._url, self._socket_timeout_s, _WRITE_ONCE)

    def deliver(self, records: list[Record]) -> None:
        pipe = self._client.pipeline(transaction=False)
        ttl_ms = str(int(self.limits.dedup_ttl_s * 1000))
        p = self.prefix
        calls = 0
        for record in records:
            route = self._route(record, self.limits)
            if route is None:
                continue
            rid = record_id(record)
            fields = [item for pair in route.hash_fields.items() for item in pair]
            self._script(keys=[f"{p}delivered:{rid}", f"{p}{route.stream}" if route.stream else "",
                               f"{p}{route.hash_key}" if route.hash_key else ""],
                         args=[ttl_ms, str(route.maxlen), record.to_bytes(),
                               f"{p}{route.channel}" if route.channel else "", rid, *fields],
                         client=pipe)
            calls += 1
        if calls:
            written = pipe.execute()
            self.duplicates += sum(1 for w in written if w == 0)

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# KEYS: 1 the customer's list. ARGV: 1 the summary, 2 the list's length.
# A summary already in the list is not pushed again: the events a restart replays from the
# last snapshot were written before the crash, and are still there unless more than the
# list's length of newer events followed them (then they are pushed again, at the head).
_PUSH_RECENT = """
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


class RedisEventsSink(BufferedSink):
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
        super().__init__("redis_events", dead_letters, capacity=capacity, batch_size=batch_size, policy=policy)
        self._url = url
        self.prefix = prefix
        self.length = length
        self._socket_timeout_s = socket_timeout_s
        self._client: Any = None
        self._script: Any = None
        self.duplicates = 0  # summaries already in their list (not pushed again)

    def connect(self) -> None:
        self._client, self._script = _connect(self._url, self._socket_timeout_s, _PUSH_RECENT)

    def deliver(self, records: list[Record]) -> None:
        pipe = self._client.pipeline(transaction=False)
        length = str(self.length)
        calls = 0
        for record in records:
            if isinstance(record, EventSummary):
                self._script(keys=[f"{self.prefix}customer:{record.customer_id}:events"],
                             args=[record.to_bytes(), length], client=pipe)
                calls += 1
        if calls:
            self.duplicates += sum(1 for pushed in pipe.execute() if pushed == 0)

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
