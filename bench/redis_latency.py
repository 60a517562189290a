"""Event-to-alert latency, live through Redis Streams (``[engine] source = "redis"``).

    python -m bench.redis_latency [--rate 2000 --seconds 300 --warmup 10] [--redis URL] [--real-time]

Starts a private ``redis-server`` on a free loopback port (or uses ``--redis``) and the
engine (``run.py live`` reading the input stream, writing alerts to the alerts stream),
then adds the simulator's events to the input stream at a fixed offered rate, the events
due at each millisecond in one pipelined round trip. In the same run it measures:

- the **bare hop**: a plain reader of the input stream itself (``XREAD BLOCK``), from just
  before an event was handed to Redis to when that reader got it;
- **end to end**: from the same moment to when the alert the event raised was read back
  from the alerts stream (Redis, the engine, Redis again and the reader);
- the **engine's share**, from the engine's own metrics: from when its source read the
  event to the alert decided (``since="read"``), and from the entry's Redis id, the time
  Redis added it (``since="source"``).

The simulator's clock runs a year in a few minutes of offering, so its model ticks are small
and frequent; ``--real-time`` re-stamps the events so that event time runs as the wall clock
does, and a tick holds what real traffic at the offered rate would.

It prints p50/p99/p99.9 after the warm-up, the per-5 s medians (a backlog that grows shows
as medians that rise), and whether the offered rate was really offered: how far the loop
ever fell behind its schedule.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.live_latency import (
    Offered,
    collector_off,
    encoded_events,
    histogram_quantile,
    on_schedule,
    report_engine_share,
)
from flows.modes import REDIS_SOURCE_BLOCK_MS
from schemas.events import parse_timestamp
from schemas.redis_keys import RedisKeys
from tests.brokers import free_port, http_get
from tests.services import redis_server

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "lat:"
EVENTS, ALERTS = RedisKeys(PREFIX).input_stream("events"), RedisKeys(PREFIX).alerts()


@contextmanager
def server(external: str | None, log_dir: Path) -> Iterator[str]:
    """``external`` if given, else a fresh ``redis-server`` on loopback."""
    if external:
        yield external
    else:
        with redis_server(log_dir) as srv:
            yield srv.url


@dataclass
class StreamReader:
    """Reads one stream from its end on its own thread (``XREAD BLOCK``) and records, per
    entry, its event id (``key`` of its data; without a ``key``, the entry's own id, and the
    data is not even decoded) and when it was read."""

    url: str
    stream: str
    key: str | None
    got: list[tuple[str, float, float | None]] = field(default_factory=list)  # (id, read, emitted)
    last: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = redis.Redis.from_url(self.url)
        last = "$"
        while not self.stop.is_set():
            reply = client.xread({self.stream: last}, count=1000, block=100)
            now = time.time()
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    if self.key is None:
                        self.got.append((last, now, None))
                        continue
                    record = orjson.loads(fields[b"data"])
                    emitted = record.get("emitted_at")
                    self.got.append((record[self.key], now, parse_timestamp(emitted) if emitted else None))
                if entries:
                    self.last = time.monotonic()


def offer(url: str, rate: float, seconds: float, events: list[tuple[dict, bytes]], sent: dict[str, float]) -> Offered:
    """Add ``events`` to the input stream at ``rate`` per second for ``seconds``: what is due
    goes in one pipelined round trip, before waiting for the next event. ``sent`` gets the
    moment each was handed to Redis, by event id and by entry id."""
    client = redis.Redis.from_url(url)
    out = Offered()
    pending: list[tuple[dict, bytes]] = []

    def flush() -> None:
        if pending:
            _send(client, pending, sent)
            pending.clear()

    for event in on_schedule(events, rate, seconds, out, idle=flush):
        pending.append(event)
    flush()
    return out


def _send(client: redis.Redis, events: list[tuple[dict, bytes]], sent: dict[str, float]) -> None:
    pipe = client.pipeline(transaction=False)
    for _, data in events:
        pipe.xadd(EVENTS, {"data": data})
    now = time.time()
    for event, _ in events:
        sent[event["event_id"]] = now
    for entry_id in pipe.execute():
        sent[entry_id.decode()] = now


def percentiles(name: str, values: list[float]) -> None:
    if not values:
        print(f"{name}: none")
        return
    ms = np.array(values) * 1000.0
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    print(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms, max {ms.max():.2f} ms "
          f"over {ms.size:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second offered")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured period")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds excluded from the figures")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--redis", default=None, help="an existing Redis (keys lat:*) instead of a private one")
    parser.add_argument("--epoch-interval", type=float, default=2.0, help="[engine] epoch_interval_s")
    parser.add_argument("--real-time", action="store_true",
                        help="event time runs as the wall clock while offering (the simulator's: a year in minutes)")
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)  # this process's three threads hand over the lock promptly
    with tempfile.TemporaryDirectory() as tmp, server(args.redis, Path(tmp)) as url:
        redis.Redis.from_url(url).delete(EVENTS, ALERTS, f"{EVENTS}:cursor")
        redis.Redis.from_url(url).xadd(EVENTS, {"data": b"{}"})  # the stream exists: the engine reads from its end
        metrics_port = free_port()
        env = {**os.environ, "CRM__ENGINE__SOURCE": "redis", "CRM__REDIS__ENABLED": "true", "CRM__REDIS__URL": url,
               "CRM__REDIS__KEY_PREFIX": PREFIX, "CRM__REDIS__INPUT_STREAM": "events",
               "CRM__REDIS__INPUT_DEAD_LETTER_PATH": str(Path(tmp) / "dead.jsonl"),
               "CRM__ENGINE__EPOCH_INTERVAL_S": str(args.epoch_interval)}
        with open(Path(tmp) / "engine.log", "wb") as log:
            engine = subprocess.Popen([sys.executable, "run.py", "live", "--quiet", "--metrics-port",
                                       str(metrics_port)], cwd=ROOT, env=env, stderr=log)
            sent: dict[str, float] = {}
            bare, alerts = StreamReader(url, EVENTS, None), StreamReader(url, ALERTS, "event_id")
            threads = [threading.Thread(target=r.run, daemon=True) for r in (bare, alerts)]
            try:
                for thread in threads:
                    thread.start()
                begun = time.monotonic()
                events = encoded_events(args.customers, int(args.rate * (args.warmup + args.seconds)) + 1,
                                        args.rate if args.real_time else None)
                time.sleep(max(0.0, 4.0 - (time.monotonic() - begun)))  # the engine's imports before the clock starts
                if engine.poll() is not None:
                    raise SystemExit(f"the engine exited with {engine.returncode}: see its log")
                with collector_off():
                    offered = offer(url, args.rate, args.warmup + args.seconds, events, sent)
                    stopped = time.monotonic()
                    while time.monotonic() - max(alerts.last, stopped) < 3.0 and time.monotonic() - stopped < 60:
                        time.sleep(0.1)
                engine_metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            finally:
                for reader in (bare, alerts):
                    reader.stop.set()
                engine.send_signal(signal.SIGTERM)
                try:
                    engine.wait(30)
                except subprocess.TimeoutExpired:
                    engine.kill()
    print(f"offered {offered.count / offered.loop_seconds:,.0f} events/s for {offered.loop_seconds:.1f} s "
          f"({offered.count:,} events); at most {offered.max_behind_ms:.1f} ms behind schedule; engine epoch "
          f"{args.epoch_interval} s, source XREAD BLOCK {REDIS_SOURCE_BLOCK_MS} ms when idle, batches of up to 500")
    cutoff = offered.started + args.warmup
    hop = [read - sent[eid] for eid, read, _ in bare.got if eid in sent and sent[eid] >= cutoff]
    first: dict[str, tuple[float, float | None]] = {}  # event id -> its first alert (read, emitted)
    for eid, read, emitted in alerts.got:
        first.setdefault(eid, (read, emitted))
    window = [(sent[eid], read, emitted) for eid, (read, emitted) in first.items()
              if eid in sent and sent[eid] >= cutoff]
    print(f"alerts: {len(first)} for events of this run, {len(window)} after the warm-up")
    percentiles("bare hop (XADD -> XREAD of the input stream)", hop)
    percentiles("end to end (event added -> its alert read back)", [read - t0 for t0, read, _ in window])
    split = [(t0, read, emitted) for t0, read, emitted in window if emitted is not None]
    percentiles("  in  (event added -> alert decided; emitted_at has 1 ms resolution)",
                [emitted - t0 for t0, _, emitted in split])
    percentiles("  out (alert decided -> alert read back)", [read - emitted for _, read, emitted in split])
    spans = []
    for start in np.arange(0.0, offered.loop_seconds, 5.0):
        lat = [(read - sent[eid]) * 1000.0 for eid, (read, _) in first.items()
               if eid in sent and start <= sent[eid] - offered.started < start + 5.0]
        if lat:
            spans.append(f"{start:.0f}: {np.median(lat):.1f}")
    print("  end-to-end p50 by 5 s of sending (s: ms): " + ", ".join(spans))
    report_engine_share(engine_metrics)
    report_stage_times(engine_metrics)


def report_stage_times(text: str) -> None:
    """Where a batch's time goes in the engine: each stage's p50/p99 per batch."""
    samples = [sample for family in text_string_to_metric_families(text)
               if family.name == "crm_engine_step_batch_duration_seconds" for sample in family.samples
               if sample.name.endswith("_bucket")]
    for step in sorted({sample.labels["step"] for sample in samples}):
        buckets = sorted((float(sample.labels["le"]), sample.value) for sample in samples
                         if sample.labels["step"] == step)
        if buckets and buckets[-1][1]:
            p50, p99, p999 = (histogram_quantile(q, buckets) * 1000.0 for q in (0.5, 0.99, 0.999))
            print(f"  engine stage {step:<17} per batch: p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms "
                  f"over {buckets[-1][1]:,.0f} batches")


if __name__ == "__main__":
    main()
