"""A Redis stream as a source (the dashboard's feedback in the built-in simulator mode)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine.admission import InputBounds, WallClockGuard
from flows.items import Sequenced
from flows.sources.common import SourceItem, decode, refuse
from schemas.outputs import DeadLetter

log = logging.getLogger(__name__)


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
                 batch_size: int, guard: WallClockGuard, block_ms: int = 0) -> None:
        self._client, self._key, self._stop, self._batch = client, key, stop, batch_size
        self._block_ms, self._idle = block_ms, False
        self._guard = guard
        self._part = f"redis:{key}"
        self._last, self._seq = start.last_id, start.seq
        self._cursor = f"{key}:cursor"
        self._wait = 0.0
        self._down = False

    def next_batch(self) -> list[SourceItem]:
        import redis

        if self._stop.is_set():
            raise StopIteration
        try:
            block = self._block_ms if self._idle and self._block_ms else None
            reply = self._client.xread({self._key: self._last}, count=self._batch, block=block)
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
                raw, origin = fields.get(b"data", b""), {"stream": self._key, "id": entry}
                limit = self._guard.bounds.dead_letter_max_payload_bytes
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
        if batch:
            # The cursor lets a run without recovery carry on where the last one stopped.
            self._client.set(self._cursor, self._last)
        self._idle = not reply
        self._wait = 0.0 if batch or self._block_ms else self.IDLE_POLL_S
        return batch

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=self._wait) if self._wait else None

    def snapshot(self) -> StreamPosition:
        return StreamPosition(self._last, self._seq)

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[SourceItem, StreamPosition]):
    """Input events from a Redis stream (entries with a ``data`` field holding one event of
    the contract, of any kind): how the dashboard's feedback reaches the engine beside the
    simulator or Kafka (``[redis] input_stream``), or the engine's only input (``[engine]
    source = "redis"``, read with ``block_ms``).

    One partition, read from the snapshotted position with recovery; without, from the
    stream's ``:cursor`` key (where the last run stopped), else from the stream's end.
    Delivery: exactly once with recovery; without, an entry read but not yet processed when
    the process dies is lost (the cursor moved past it).
    """

    def __init__(self, url: str, key: str, stop: threading.Event | None = None,
                 batch_size: int = 500, socket_timeout_s: float = 5.0, bounds: InputBounds | None = None,
                 block_ms: int = 0) -> None:
        self._url, self._key, self._stop = url, key, stop or threading.Event()
        self._block_ms = block_ms
        self._batch, self._timeout = batch_size, socket_timeout_s
        self._guard = WallClockGuard(bounds or InputBounds())

    def list_parts(self) -> list[str]:
        return [f"redis:{self._key}"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: StreamPosition | None) -> _RedisStreamPartition:
        import redis

        client = redis.Redis.from_url(self._url, socket_timeout=self._timeout,
                                      socket_connect_timeout=self._timeout)
        start = resume_state
        if start is None:
            cursor: Any = client.get(f"{self._key}:cursor")
            if cursor is None:
                last: Any = client.xrevrange(self._key, count=1)
                cursor = last[0][0] if last else b"0-0"
            start = StreamPosition(bytes(cursor).decode(), 0)
        return _RedisStreamPartition(client, self._key, start, self._stop, self._batch, self._guard,
                                     self._block_ms)
