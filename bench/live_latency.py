"""Event-to-alert latency, live through a real Kafka-protocol broker on loopback.

    python -m bench.live_latency [--rate 2000 --seconds 60 --warmup 10 --workers 1]
    python -m bench.live_latency --mock [--fetch-wait-ms 5]      # librdkafka's mock cluster
    python -m bench.live_latency ... --real-time   # event time at the wall clock's pace (see encoded_events)

In the same run, a plain consumer of the transactions topic measures the **bare hop** on the
same broker (event handed to the producer -> read by a consumer), so the engine's two hops
can be compared with it.

Starts a broker (Tansu, from the test dependencies) and the engine (``run.py live``), then
produces the simulator's stream into the four input topics (``--partitions`` each, 2 by default) at a fixed
offered rate. For every alert read back from the ``alerts`` topic, latency is the time from
just before its triggering event was handed to the producer to when the alert was consumed:
producer, broker, engine (source, three steps, sink), broker again and consumer all
included. Prints p50/p99/p99.9 after a warm-up, and how the time splits around the alert's
own produce time (the Kafka timestamp the engine's producer stamps, 1 ms resolution):
"in" = event produced -> alert produced (input hop and engine), "out" = alert produced ->
consumed (output hop). Finally it reads the engine's own ``/metrics``: the alert latency
from when the engine read each event off the broker to the alert decided (``since=read``,
the engine's share, whatever the broker does) and from the event's Kafka timestamp.

The figures are honest only if the offered load really was offered and every alert was
waited for, so it also prints: the rate at which the loop handed events to the producer
(excluding the final flush) and how far it ever fell behind its schedule; how many events
the broker acknowledged; and the alerts still arriving after the producer stopped (the
reader keeps going until the alerts topic has been quiet for ``--drain`` seconds).

Tansu's in-memory store (the default broker here) lists every batch stored in a partition
on each fetch that finds data there (about 0.4 us per batch on this machine), so its fetch
cost grows with the run: at 2,000 events/s with linger.ms=1 (about one record per batch) a
partition holds ~9,000 batches after 40 s and each fetch round over the 8 input partitions
costs ~30 ms of broker CPU. Late in a long run the figures then measure the broker, not
the engine. ``--bootstrap`` runs the same measurement against an existing Kafka instead, and
``--mock`` against librdkafka's mock cluster (``tests.mockbroker``; topics of 4 partitions,
created by a metadata request since it does not answer CreateTopics). The mock answers a
fetch that finds nothing only when the consumer's ``fetch.wait.max.ms`` has passed, so
``--fetch-wait-ms`` sets it for the engine (``[kafka.consumer]``) and the bench's readers.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas.outputs import format_ts
from simulator import SimulatorConfig, generate
from tests.brokers import create_topics, free_port, http_get, tansu_broker
from tests.mockbroker import mock_cluster, mock_topics

ROOT = Path(__file__).resolve().parents[1]
# event kind -> the engine setting naming its topic, and that topic's default name
TOPICS = {"transaction": ("transactions_topic", "transactions"), "app": ("app_topic", "app_events"),
          "feedback": ("feedback_topic", "feedback"), "profile": ("profile_topic", "profiles")}
CLIENT = {"socket.nagle.disable": True}


@contextmanager
def broker(external: str | None, log_dir: Path, mock: bool = False) -> Iterator[str]:
    """``external`` if given (an existing Kafka), else librdkafka's mock cluster (``mock``)
    or a fresh Tansu broker on loopback."""
    if external:
        yield external
    elif mock:
        with mock_cluster() as bootstrap:
            yield bootstrap
    else:
        with tansu_broker(log_dir) as bootstrap:
            yield bootstrap



@dataclass
class Received:
    """One alert: when its event was sent, when the engine produced it, when it was read."""

    sent: float
    produced: float
    consumed: float


@dataclass
class Reader:
    """Reads the alerts topic on its own thread; ``last`` is when the latest alert arrived."""

    bootstrap: str
    topic: str
    partitions: int
    sent: dict[str, float]
    fetch_wait_ms: int = 1
    received: list[Received] = field(default_factory=list)
    unknown: int = 0
    last: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # fetch.wait.max.ms bounds how long a fetch that found nothing is held by the broker;
        # keep it short so the reader adds little to what is measured.
        consumer = Consumer({**CLIENT, "bootstrap.servers": self.bootstrap, "group.id": "bench",
                             "enable.auto.commit": False, "fetch.wait.max.ms": self.fetch_wait_ms,
                             "fetch.min.bytes": 1})
        consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in range(self.partitions)])
        consumer.poll(0.5)  # resolve the end offsets before any alert can be produced
        self.ready.set()
        try:
            while not self.stop.is_set():
                # poll() returns as soon as one message is there (consume(n, t) would wait
                # for n messages or t seconds, which would be measured as latency).
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                batch = [msg, *consumer.consume(500, 0)]
                now = time.time()
                for m in batch:
                    if m.error() is None:
                        self._record(m, now)
        finally:
            consumer.close()

    def _record(self, msg: object, now: float) -> None:
        self.last = time.monotonic()
        event_id = orjson.loads(msg.value())["event_id"]  # type: ignore[attr-defined]
        sent = self.sent.get(event_id)
        if sent is None:
            self.unknown += 1
            return
        _, ts_ms = msg.timestamp()  # type: ignore[attr-defined]
        self.received.append(Received(sent, ts_ms / 1000.0, now))


@dataclass
class Offered:
    """What the producer loop achieved."""

    count: int = 0
    started: float = 0.0  # wall clock of the first event
    loop_seconds: float = 0.0
    max_behind_ms: float = 0.0
    queue_full: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0


def on_schedule(events: Iterable[dict[str, Any]], rate: float, seconds: float, out: Offered,
                idle: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``events`` at ``rate`` per second for ``seconds``, each when it is due, counting
    them and how far the loop ever fell behind its schedule into ``out``; ``idle`` is called
    whenever the next event is not due yet (before waiting for it)."""
    started = time.perf_counter()
    out.started = time.time()
    for event in events:
        due = started + out.count / rate
        if idle is not None and due > time.perf_counter():
            idle()
        while (ahead := due - time.perf_counter()) > 0:
            time.sleep(min(ahead, 0.0005))
        now = time.perf_counter()
        if now - started >= seconds:
            break
        out.max_behind_ms = max(out.max_behind_ms, (now - due) * 1000.0)
        yield event
        out.count += 1
    out.loop_seconds = time.perf_counter() - started


def simulated_events(customers: int) -> Iterator[dict[str, Any]]:
    """The stream both latency benchmarks offer: a year of the simulator, half its cases fraud."""
    return generate(SimulatorConfig(customers=customers, days=365, seed=5, fraud_rate=0.5))


def encoded_events(customers: int, n: int, real_time: float | None = None) -> list[tuple[dict[str, Any], bytes]]:
    """The first ``n`` of ``simulated_events``, each with its JSON, made before the clock
    starts: simulating and encoding them while offering would take a core of the machine the
    engine runs on at 10,000 events/s.

    The simulator's clock runs a year in a few minutes of offering, so an hour of event time
    holds a few hundred events. With ``real_time`` (the offered rate), the events are
    re-stamped, in order, that many to the second from now: event time then runs as the wall
    clock does while they are offered, and an hour holds what real traffic at that rate
    would (7.2 million events at 2,000 a second)."""
    events: Iterable[dict[str, Any]] = itertools.islice(simulated_events(customers), n)
    if real_time is not None:
        start = time.time()
        events = ({**event, "ts": format_ts(start + i / real_time)} for i, event in enumerate(events))
    return [(event, orjson.dumps(event)) for event in events]


@contextmanager
def collector_off() -> Iterator[None]:
    """This process's garbage collector off while it measures. The bench holds millions of
    objects (the events to offer, the send times, the readings); a full collection of them
    stopped its offering and its readers for up to a second, which the figures then showed as
    the engine's latency. What is made until then is frozen, and nothing it allocates while
    measuring forms cycles worth collecting."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def produce_stream(bootstrap: str, topic_of: dict[str, str], rate: float, seconds: float,
                   events: list[tuple[dict[str, Any], bytes]], linger_ms: float, sent: dict[str, float]) -> Offered:
    """Hand ``events`` to a producer at ``rate`` per second for ``seconds``."""
    out = Offered()

    def on_delivery(err: object, _msg: object) -> None:
        if err is None:
            out.delivered += 1
        else:
            out.failed += 1

    producer = Producer({**CLIENT, "bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    for event, value in on_schedule(events, rate, seconds, out):
        key = event["customer_id"].encode()
        sent[event["event_id"]] = time.time()
        while True:
            try:
                producer.produce(topic_of[event["kind"]], value, key, on_delivery=on_delivery)
                break
            except BufferError:
                out.queue_full += 1
                producer.poll(0.001)
        producer.poll(0)
    out.undelivered = producer.flush(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second offered")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured period")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds excluded from the figures")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=2, help="partitions of every topic")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--linger-ms", type=float, default=1.0, help="the event producer's linger.ms")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="after the last event, read alerts until none came for this long (max 60 s)")
    parser.add_argument("--engine-log", type=Path, default=None, help="keep the engine's stderr here")
    parser.add_argument("--bootstrap", default=None,
                        help="use this existing Kafka (topics named *.bench-<time> are created) "
                        "instead of starting a Tansu broker")
    parser.add_argument("--mock", action="store_true", help="librdkafka's mock cluster instead of Tansu")
    parser.add_argument("--real-time", action="store_true",
                        help="event time runs as the wall clock while offering (the simulator's: a year in minutes)")
    parser.add_argument("--fetch-wait-ms", type=int, default=None,
                        help="fetch.wait.max.ms of the engine's consumers (default: its own, 50) and of "
                        "the bench's readers (default 1)")
    args = parser.parse_args()
    suffix = f".bench-{int(time.time())}" if args.bootstrap else ""
    topic_of = {kind: name + suffix for kind, (_, name) in TOPICS.items()}
    alerts, dead_letter = "alerts" + suffix, "dead_letter" + suffix
    prompts = "nba_prompts" + suffix
    with tempfile.TemporaryDirectory() as tmp, broker(args.bootstrap, Path(tmp), args.mock) as bootstrap:
        if args.mock:
            args.partitions = mock_topics(bootstrap, [*topic_of.values(), alerts, prompts, dead_letter])
        else:
            create_topics(bootstrap, {**dict.fromkeys(topic_of.values(), args.partitions),
                                      alerts: args.partitions, prompts: 1, dead_letter: 1})
        waits = {} if args.fetch_wait_ms is None else {
            "CRM__KAFKA__CONSUMER__FETCH.WAIT.MAX.MS": str(args.fetch_wait_ms)}
        env = {**os.environ, **waits, "CRM__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "CRM__KAFKA__STARTING_OFFSET": "latest", "CRM__KAFKA__ALERTS_TOPIC": alerts,
               "CRM__KAFKA__PROMPTS_TOPIC": prompts,
               "CRM__KAFKA__DEAD_LETTER_TOPIC": dead_letter,
               **{f"CRM__KAFKA__{setting.upper()}": topic_of[kind] for kind, (setting, _) in TOPICS.items()}}
        log = open(args.engine_log or Path(tmp) / "engine.log", "wb")  # noqa: SIM115 (closed below)
        metrics_port = free_port()
        engine = subprocess.Popen(
            [sys.executable, "run.py", "live", "--quiet", "--workers", str(args.workers),
             "--metrics-port", str(metrics_port)],
            cwd=ROOT, env=env, stderr=log)
        sent: dict[str, float] = {}
        reader_wait = args.fetch_wait_ms or 1
        reader = Reader(bootstrap, alerts, args.partitions, sent, reader_wait)
        bare = Reader(bootstrap, topic_of["transaction"], args.partitions, sent, reader_wait)  # the bare hop
        thread = threading.Thread(target=reader.run, daemon=True)
        bare_thread = threading.Thread(target=bare.run, daemon=True)
        try:
            thread.start()
            bare_thread.start()
            begun = time.monotonic()
            events = encoded_events(args.customers, int(args.rate * (args.warmup + args.seconds)) + 1,
                                    args.rate if args.real_time else None)
            time.sleep(max(0.0, 4.0 - (time.monotonic() - begun)))  # imports and partition assignment
            if engine.poll() is not None or not (reader.ready.wait(10) and bare.ready.wait(10)):
                raise SystemExit(f"the engine exited with {engine.returncode} before the run"
                                 if engine.poll() is not None else "the alerts reader did not start")
            with collector_off():
                offered = produce_stream(bootstrap, topic_of, args.rate, args.warmup + args.seconds,
                                         events, args.linger_ms, sent)
                stopped, stopped_wall = time.monotonic(), time.time()
                while (time.monotonic() - max(reader.last, stopped) < args.drain
                       and time.monotonic() - stopped < 60):
                    time.sleep(0.1)
            engine_metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        finally:
            reader.stop.set()
            bare.stop.set()
            thread.join(10)
            bare_thread.join(10)
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(30)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
            log.close()
    report(args, offered, reader, sum(r.consumed > stopped_wall for r in reader.received))
    bare_hop = np.array([r.consumed - r.sent for r in bare.received
                         if r.sent >= offered.started + args.warmup]) * 1000.0
    if bare_hop.size:
        p50, p99, p999 = np.percentile(bare_hop, [50, 99, 99.9])
        print(f"bare hop (event handed to the producer -> read by a plain consumer, {bare_hop.size:,} "
              f"transactions): p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms; two hops' p99 + 5 ms: "
              f"{2 * p99 + 5:.1f} ms")
    report_engine_share(engine_metrics)


def report(args: argparse.Namespace, offered: Offered, reader: Reader, after_stop: int) -> None:
    print(f"offered {offered.count / offered.loop_seconds:,.0f} events/s for {offered.loop_seconds:.1f} s "
          f"({offered.count:,} events, {args.workers} worker(s)); loop at most "
          f"{offered.max_behind_ms:.1f} ms behind schedule, {offered.queue_full} queue-full waits; "
          f"broker acknowledged {offered.delivered:,}, failed {offered.failed}, "
          f"undelivered {offered.undelivered}")
    cutoff = offered.started + args.warmup
    window = [r for r in reader.received if r.sent >= cutoff]
    gap = offered.started + offered.loop_seconds - max((r.sent for r in reader.received),
                                                       default=offered.started)
    print(f"alerts read: {len(reader.received)} ({after_stop} after the producer stopped, "
          f"{reader.unknown} not from this run); the newest is for an event sent {gap:.1f} s "
          f"before the last one")
    if gap > 5.0:
        print("WARNING: the engine never caught up: the alerts it still owes are missing from "
              "the figures below, which therefore understate the latency")
    if not window:
        print("no alerts after the warm-up")
        return
    total = np.array([r.consumed - r.sent for r in window]) * 1000.0
    into = np.array([r.produced - r.sent for r in window]) * 1000.0
    out = np.array([r.consumed - r.produced for r in window]) * 1000.0
    p50, p99, p999 = np.percentile(total, [50, 99, 99.9])
    print(f"event-to-alert latency over {total.size} alerts: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"p99.9 {p999:.2f} ms, max {total.max():.2f} ms")
    print(f"  in  (event sent -> alert produced):   p50 {np.percentile(into, 50):.1f} ms, "
          f"p99 {np.percentile(into, 99):.1f} ms, max {into.max():.1f} ms")
    print(f"  out (alert produced -> alert read):   p50 {np.percentile(out, 50):.1f} ms, "
          f"p99 {np.percentile(out, 99):.1f} ms, max {out.max():.1f} ms")
    step = 5.0
    spans = []
    for start in np.arange(0.0, offered.loop_seconds, step):
        lat = [(r.consumed - r.sent) * 1000.0 for r in reader.received
               if start <= r.sent - offered.started < start + step]
        if lat:
            spans.append(f"{start:.0f}-{start + step:.0f} s: {np.median(lat):.0f} ms ({len(lat)})")
    print("  p50 by when the event was sent (alerts): " + ", ".join(spans))


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative ``(le, count)`` buckets.

    >>> histogram_quantile(0.5, [(0.001, 0.0), (0.002, 10.0), (float("inf"), 10.0)])
    0.0015
    """
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below) if count > below else le
        lower, below = le, count
    return lower


def report_engine_share(text: str) -> None:
    """The engine's own alert latency over the whole run (warm-up included), from its metrics:
    from when it read the event off the broker, and from the event's Kafka timestamp."""
    samples = [sample for family in text_string_to_metric_families(text)
               if family.name == "crm_engine_alert_latency_seconds" for sample in family.samples
               if sample.name.endswith("_bucket")]
    for since in ("read", "source"):
        buckets = sorted((float(sample.labels["le"]), sample.value) for sample in samples
                         if sample.labels.get("since") == since)
        if not buckets or buckets[-1][1] == 0:
            print(f"  engine metrics: no alert latency since={since}")
            continue
        p50, p99 = (histogram_quantile(q, buckets) * 1000.0 for q in (0.5, 0.99))
        print(f"  engine metrics, since={since:<6} (bucket-interpolated): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"over {buckets[-1][1]:.0f} alerts")


if __name__ == "__main__":
    main()
