"""Back-pressure for sinks whose transport can be down: a bounded buffer, a delivery thread,
retries with exponential backoff and full jitter, and a dead letter for what cannot be
delivered.

``BufferedSink`` is the base of the Redis and webhook sinks. ``write_batch`` never blocks
the dataflow: it appends to a bounded in-memory buffer and returns. A background thread
delivers the buffer in order, in batches of at most ``batch_size``; a failed batch is
retried after ``policy.delay(attempt)`` until it succeeds or its retry budget
(``policy.budget_s``) is spent, and then goes to the dead letter with the reason. What
arrives while the buffer is full goes straight to the dead letter ("buffer full"): nothing
is dropped silently. A subclass raises ``Undeliverable`` for a permanent refusal of a batch
(an HTTP 400, say), which skips the retries, or returns the records refused one by one (a
Redis key of the wrong type), which go to the dead letter while the rest of the batch counts
as delivered.

Delivery: at least once. ``position()`` (the sink's recovery snapshot) is the list of
records not yet delivered, so a crash loses nothing that was handed to the sink: a
restart re-queues them, and the replay after the snapshot writes the rest again.
Subclasses make every write idempotent by record id.

Counters are plain attributes: ``delivered``, ``retried`` (failed attempts that were
retried), ``failed`` (failed attempts), ``dead_lettered`` and ``buffer_depth``. With
Prometheus metrics attached (``attach_metrics``, done by ``ops.MeteredSink``), each retry
counts in ``crm_engine_sink_retries_total``, each dead-lettered record in
``crm_engine_sink_errors_total`` and the buffer in ``crm_engine_sink_buffered_records``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from schemas.outputs import DeadLetter
from sinks.base import Record, Sink

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """The destination refused a record for good; retrying cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
    And Jitter"): the n-th retry waits a uniform time in [0, min(max_s, base_s * 2**n)].

    >>> policy = RetryPolicy(base_s=0.5, max_s=4.0)
    >>> rng = random.Random(1)
    >>> [round(policy.delay(n, rng), 3) for n in range(5)]
    [0.067, 0.847, 1.528, 1.02, 1.982]
    """

    base_s: float = 0.2
    max_s: float = 10.0
    budget_s: float = 300.0  # a batch still undelivered after this long goes to the dead letter

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_s, self.base_s * 2.0 ** attempt))


class DeadLetterOut(Protocol):
    """Where a sink puts what it could not deliver."""

    def write(self, letters: list[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class JsonlDeadLetters:
    """Dead letters appended to a JSONL file (one ``DeadLetter`` per line, flushed)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._file: BinaryIO | None = None

    def write(self, letters: list[DeadLetter]) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115 (held open until close)
        self._file.write(b"".join(letter.to_bytes() + b"\n" for letter in letters))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class KafkaDeadLetters:
    """Dead letters produced to a Kafka topic (flushed on every write: they are rare)."""

    def __init__(self, client_config: dict[str, str | int | float | bool], topic: str) -> None:
        self._config = client_config
        self._topic = topic
        self._producer: Any = None

    def write(self, letters: list[DeadLetter]) -> None:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self._config)
        for letter in letters:
            self._producer.produce(self._topic, letter.to_bytes())
        if self._producer.flush(10):
            log.error("dead letters to %s not acknowledged within 10 s", self._topic)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None


def record_id(record: Record) -> str:
    """The id a record is de-duplicated by: ``action_id``, ``change_id``, ``alert_id``,
    ``prompt_id`` or ``event_id``."""
    for name in ("action_id", "change_id", "alert_id", "prompt_id", "event_id"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            return value
    return getattr(record, "customer_id", None) or "-"


class BufferedSink(Sink):
    """A sink delivered by a background thread from a bounded buffer (see the module doc)."""

    def __init__(self, name: str, dead_letters: DeadLetterOut, capacity: int = 10_000,
                 batch_size: int = 100, policy: RetryPolicy | None = None,
                 rng: random.Random | None = None, close_timeout_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.capacity = capacity
        self.batch_size = batch_size
        self.policy = policy or RetryPolicy()
        self.close_timeout_s = close_timeout_s
        self._dead = dead_letters
        self._rng = rng or random.Random(0)
        self._monotonic = monotonic
        self._buffer: deque[Record] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.retried = 0
        self.failed = 0
        self.dead_lettered = 0
        self._metrics: Any = None  # ops.metrics.SinkMetrics, once attached

    # -- what a transport implements ---------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Create the transport's client (called in ``open``)."""

    @abstractmethod
    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        """Deliver ``records`` idempotently, or raise (``Undeliverable`` if retrying cannot help).
        A transport that can refuse single records for good returns them with the reason:
        they go to the dead letter and the rest of the batch counts as delivered."""

    def disconnect(self) -> None:
        """Release the transport's client."""

    # -- the Sink interface ------------------------------------------------------------------

    @property
    def buffer_depth(self) -> int:
        return len(self._buffer)

    def attach_metrics(self, metrics: Any) -> None:
        self._metrics = metrics
        metrics.buffer_depth(len(self._buffer))

    def _report_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.buffer_depth(len(self._buffer))

    def open(self, resume: Any = None) -> None:
        self.connect()
        if isinstance(resume, list):
            self._buffer.extend(resume)
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def write_batch(self, records: list[Record]) -> None:
        overflow: list[Record] = []
        with self._cond:
            room = self.capacity - len(self._buffer)
            if room < len(records):
                overflow = records[max(room, 0):]
                records = records[:max(room, 0)]
            self._buffer.extend(records)
            self._report_depth()
            self._cond.notify()
        if overflow:
            self._dead_letter(overflow, f"{self.name}: delivery buffer full ({self.capacity} records)")

    def position(self) -> list[Record]:
        """The records not yet delivered (re-queued by ``open`` after a restart)."""
        with self._cond:
            return list(self._buffer)

    def close(self) -> None:
        deadline = self._monotonic() + self.close_timeout_s
        with self._cond:
            while self._buffer and self._monotonic() < deadline:
                self._cond.wait(0.05)
        self._closing.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.close_timeout_s)
        with self._cond:
            left = list(self._buffer)
            self._buffer.clear()
        if left:
            self._dead_letter(left, f"{self.name}: undelivered when the sink closed")
        self.disconnect()
        self._dead.close()

    # -- the delivery thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            with self._cond:
                while not self._buffer and not self._closing.is_set():
                    self._cond.wait(0.5)
                batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            if batch:
                self._deliver_with_retries(batch)

    def _deliver_with_retries(self, batch: list[Record]) -> None:
        started, attempt = self._monotonic(), 0
        while True:
            try:
                refused = self.deliver(batch) or []
            except Undeliverable as exc:
                self.failed += 1
                self._done(batch)
                self._dead_letter(batch, f"{self.name}: refused: {exc}")
                return
            except Exception as exc:  # any transport error is retried
                self.failed += 1
                waited = self._monotonic() - started
                if waited >= self.policy.budget_s or self._closing.is_set():
                    if self._closing.is_set():
                        return  # close() dead-letters what is still buffered
                    self._done(batch)
                    self._dead_letter(batch, f"{self.name}: undelivered after {attempt + 1} attempts "
                                             f"in {waited:.1f} s: {exc}")
                    return
                self.retried += 1
                if self._metrics is not None:
                    self._metrics.retry()
                if attempt == 0:
                    log.warning("%s: delivery failed, retrying: %s", self.name, exc)
                self._closing.wait(self.policy.delay(attempt, self._rng))
                attempt += 1
            else:
                self._done(batch)
                self.delivered += len(batch) - len(refused)
                if refused:
                    self.failed += 1
                    self._refuse(refused)
                return

    def _refuse(self, refused: list[tuple[Record, str]]) -> None:
        """Dead-letter records refused one by one, one letter call per reason."""
        by_reason: dict[str, list[Record]] = {}
        for record, reason in refused:
            by_reason.setdefault(reason, []).append(record)
        for reason, records in by_reason.items():
            self._dead_letter(records, f"{self.name}: refused: {reason}")

    def _done(self, batch: list[Record]) -> None:
        with self._cond:
            for _ in batch:
                self._buffer.popleft()
            self._report_depth()
            self._cond.notify_all()

    def _dead_letter(self, records: list[Record], reason: str) -> None:
        self.dead_lettered += len(records)
        if self._metrics is not None:
            self._metrics.error(len(records))
        log.error("%s (%d records to the dead letter)", reason, len(records))
        self._dead.write([DeadLetter.of(r.to_bytes(), reason, {"sink": self.name, "id": record_id(r)})
                          for r in records])
