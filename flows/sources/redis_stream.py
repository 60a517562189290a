"""A Redis stream as a source: the dashboard's feedback beside another source, or the
engine's only input, read from a cursor or as a consumer group."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine.admission import InputBounds, WallClockGuard
from flows import collector
from flows.items import Sequenced
from flows.sources.common import SourceItem, decode, refuse
from schemas.outputs import DeadLetter
from schemas.redis_url import RedisEndpoint
from sinks.redis_client import connect

if TYPE_CHECKING:
    from ops import Telemetry

log = logging.getLogger(__name__)

#: How often (seconds) a consumer group's lag is read (``XINFO GROUPS``) and exported.
LAG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Group:
    """Reading as a consumer group: its name and this process's consumer name in it."""

    name: str
    consumer: str


def consumer_name(configured: str, process_id: int) -> str:
    """``configured``, else the host name and the cluster process id (stable in a StatefulSet)."""
    return configured or f"{socket.gethostname()}-{process_id}"


@dataclass(frozen=True)
class StreamPosition:
    """Resume state of a Redis stream partition: the last entry id read and the next seq."""

    last_id: str
    seq: int


class _RedisStreamPartition(StatefulSourcePartition[SourceItem, StreamPosition]):
    """Reads new entries of one stream.

    An idle side stream is polled every ``IDLE_POLL_S``, without ever blocking the worker. As
    the engine's only source (``block_ms`` > 0), a read that found nothing waits up to
    ``block_ms`` on the server for the next entry instead (``XREAD BLOCK``): an entry is read
    the moment it arrives, and the worker has nothing else to do meanwhile. An unreachable
    Redis is logged once per outage and retried every ``RETRY_S``: the rest of the dataflow
    goes on meanwhile.
    """

    IDLE_POLL_S = 0.02
    RETRY_S = 1.0

    def __init__(self, client: Any, key: str, start: StreamPosition, stop: threading.Event,
                 batch_size: int, guard: WallClockGuard, block_ms: int = 0, group: Group | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self._client, self._key, self._stop, self._batch = client, key, stop, batch_size
        self._block_ms, self._idle = block_ms, False
        self._guard = guard
        self._part = f"redis:{key}"
        self._last, self._seq = start.last_id, start.seq
        self._cursor = f"{key}:cursor"
        self._saved = start.last_id  # the cursor as last saved
        self._wait = 0.0
        self._down = False
        self._group, self._telemetry = group, telemetry
        # A group member first reads its own entries delivered before and never acknowledged
        # (from "0"), then new ones (">").
        self._own = "0-0" if group is not None else None
        self._unacked: list[str] = []  # read since the last snapshot, acknowledged at the next
        self._lag_due = 0.0

    def _read(self) -> Any:
        block = self._block_ms if self._idle and self._block_ms else None
        if self._group is None:
            return self._client.xread({self._key: self._last}, count=self._batch, block=block)
        group, consumer = self._group.name, self._group.consumer
        if self._own is not None:
            reply = self._client.xreadgroup(group, consumer, {self._key: self._own}, count=self._batch)
            if any(entries for _, entries in reply or ()):
                return reply
            self._own = None  # none left: new entries from now on
        return self._client.xreadgroup(group, consumer, {self._key: ">"}, count=self._batch, block=block)

    def next_batch(self) -> list[SourceItem]:
        import redis

        if self._stop.is_set():
            raise StopIteration
        try:
            reply = self._read()
            if self._telemetry is not None:
                self._report()
        except redis.RedisError as exc:
            if not self._down:
                log.warning("input stream %s unreachable, retrying: %s", self._key, exc)
            self._down, self._wait = True, self.RETRY_S
            return []
        self._down = False
        batch: list[SourceItem] = []
        now = time.time()
        for _, entries in reply or ():
            for entry_id, fields in entries:
                entry = entry_id.decode()
                origin = {"stream": self._key, "id": entry}
                limit = self._guard.bounds.dead_letter_max_payload_bytes
                if not fields:  # a pending entry trimmed from the stream before it was processed
                    batch.append(refuse(b"", "entry deleted from the stream before it was processed", origin, limit))
                    self._last = entry
                    self._track(entry)
                    continue
                raw = fields.get(b"data", b"")
                result = decode(raw, origin, limit)
                if isinstance(result, DeadLetter):
                    batch.append(result)
                elif (problem := self._guard.problem(result, now)) is not None:
                    batch.append(refuse(raw, problem, origin, limit))
                else:  # an entry's id starts with the milliseconds Redis added it at
                    added = int(entry.partition("-")[0]) / 1000.0
                    batch.append(Sequenced(self._part, self._seq, result, added, now))
                    self._seq += 1
                self._last = entry
                self._track(entry)
        self._idle = not reply
        if not reply:
            collector.idle()
        self._wait = 0.0 if batch or self._block_ms else self.IDLE_POLL_S
        return batch

    def _track(self, entry: str) -> None:
        """A group member's entry read: acknowledged at the next snapshot."""
        if self._group is not None:
            self._unacked.append(entry)
            if self._own is not None:
                self._own = entry  # the next read of its own pending entries goes on after it

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=self._wait) if self._wait else None

    def _report(self) -> None:
        """Once per ``LAG_INTERVAL_S``: the worker polled, and a group's lag (entries not yet
        delivered to it, plus those pending)."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        assert self._telemetry is not None
        self._telemetry.readiness.source_connected()
        self._telemetry.metrics.source_polled()
        if self._group is None:
            return
        for info in self._client.xinfo_groups(self._key):
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self._group.name:
                lag = info.get("lag")
                if lag is not None:  # None: Redis cannot tell (entries deleted)
                    self._telemetry.metrics.consumer_lag(self._key, 0, int(lag) + int(info.get("pending", 0)))

    def snapshot(self) -> StreamPosition:
        """The position at the end of an epoch. A group member acknowledges the entries read
        since the last snapshot here: the epoch that just ended processed them. Should Redis
        be down, they are acknowledged at a later snapshot (until then they stay pending, and
        a restart reads them again). Without a group, the stream's cursor moves here, once an
        epoch rather than once a batch: a read hands its entries on without another round
        trip, and a run without recovery carries on after the last finished epoch."""
        import redis

        try:
            if self._group is None:
                if self._last != self._saved:
                    self._client.set(self._cursor, self._last)
                    self._saved = self._last
            elif self._unacked:
                self._client.xack(self._key, self._group.name, *self._unacked)
                self._unacked = []
        except redis.RedisError as exc:
            what = "saving its cursor" if self._group is None else f"acknowledging {len(self._unacked)} entries"
            log.warning("input stream %s: %s failed, retried at the next epoch: %s", self._key, what, exc)
        return StreamPosition(self._last, self._seq)

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[SourceItem, StreamPosition]):
    """Input events from a Redis stream (entries with a ``data`` field holding one event of
    the contract, of any kind): how the dashboard's feedback reaches the engine beside the
    simulator or Kafka (``[redis] input_stream``), or the engine's only input (``[engine]
    source = "redis"``, read with ``block_ms``).

    One partition. Without a ``group``: read from the snapshotted position with recovery;
    without recovery, from the stream's ``:cursor`` key (where the last run stopped), else from
    the stream's end. Delivery: exactly once with recovery; without, at least once (the
    cursor moves at the end of each epoch, so what the last epoch had not finished when the
    process died is read again).

    With a ``group`` (``[redis] input_group``; created at the stream's end if it does not
    exist): entries are read as that group's consumer, acknowledged at the end of the epoch
    that processed them, and after a restart the consumer's unacknowledged entries are read
    again first: at least once without recovery (what the last epoch had not finished is
    processed again), exactly once into the state with recovery (the state resumes from the
    snapshot those acknowledgements followed). With ``telemetry``, the group's lag (entries
    not delivered yet plus those pending) is ``crm_engine_source_consumer_lag_messages``.
    """

    def __init__(self, url: str | RedisEndpoint, key: str, stop: threading.Event | None = None,
                 batch_size: int = 500, socket_timeout_s: float = 5.0, bounds: InputBounds | None = None,
                 block_ms: int = 0, group: Group | None = None, telemetry: Telemetry | None = None) -> None:
        self._url, self._key, self._stop = url, key, stop or threading.Event()
        self._block_ms = block_ms
        self._group, self._telemetry = group, telemetry
        self._batch, self._timeout = batch_size, socket_timeout_s
        self._guard = WallClockGuard(bounds or InputBounds())

    def list_parts(self) -> list[str]:
        return [f"redis:{self._key}"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: StreamPosition | None) -> _RedisStreamPartition:
        import redis

        client = connect(self._url, self._timeout)
        start = resume_state
        if self._group is not None:
            try:
                client.xgroup_create(self._key, self._group.name, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            start = start or StreamPosition("0-0", 0)
        if start is None:
            cursor: Any = client.get(f"{self._key}:cursor")
            if cursor is None:
                last: Any = client.xrevrange(self._key, count=1)
                cursor = last[0][0] if last else b"0-0"
            start = StreamPosition(bytes(cursor).decode(), 0)
        return _RedisStreamPartition(client, self._key, start, self._stop, self._batch, self._guard,
                                     self._block_ms, self._group, self._telemetry)
