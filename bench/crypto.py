"""The cost of encrypting personal fields at rest (``[crypto]``) on the Redis sinks' write path.

    python -m bench.crypto [--customers 500 --days 30] [--rounds 5] [--redis URL]

Starts a private ``redis-server`` (or uses ``--redis``), turns the simulator's stream into
what the engine writes to Redis for it: every event's timeline summary
(``sinks.redis.RedisEventsSink``), and for ``RedisSink`` an alert for every 20th transaction
(its customer's hash and the alerts stream) and every customer's state, and times writing
them, batch by batch as the sinks' delivery does, with encryption off, with SM4-GCM and with
AES-256-GCM (the same records, each run under a fresh key prefix; rounds alternate so that
a noisy, shared machine slows each alike). Prints the medians in events/s (input events
whose records were written, per second of write path), by wall time (Redis included) and by
this process's CPU time (the sinks' own work, steadier on a shared machine), the change
against encryption off, and the cost of sealing alone (no Redis) per summary.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.redis_latency import server
from schemas.crypto import PiiKeys, Sealer
from schemas.events import Transaction, parse_event
from schemas.outputs import Alert, CustomerState, EventSummary, Reason
from simulator import SimulatorConfig, generate
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisEventsSink, RedisSink

CONFIGS = ("off", "sm4-gcm", "aes-256-gcm")


def records(customers: int, days: int) -> tuple[int, list[EventSummary], list[Alert | CustomerState]]:
    """(events, their summaries, alerts and states) from the simulator's stream."""
    summaries: list[EventSummary] = []
    others: list[Alert | CustomerState] = []
    seen: dict[str, str] = {}
    n = 0
    for obj in generate(SimulatorConfig(customers=customers, days=days, seed=7)):
        event = parse_event(orjson.dumps(obj))
        n += 1
        if (summary := EventSummary.of(event)) is not None:
            summaries.append(summary)
        seen[event.customer_id] = event.ts
        if isinstance(event, Transaction) and n % 20 == 0:
            others.append(Alert(f"al-{event.event_id}", "suspicious_transaction", "high", 0.9, event.customer_id,
                                None, event.event_id, event.ts, event.ts,
                                (Reason("large_amount", "a large amount", event.amount, 0.5),), "bench"))
    others += [CustomerState(c, 0.1, 0.2, ts, ts) for c, ts in seen.items()]
    return n, summaries, others


def write_all(url: str, prefix: str, sealer: Sealer | None, summaries: list[EventSummary],
              others: list[Alert | CustomerState], dead: Path) -> tuple[float, float]:
    """Seconds (wall, and CPU of this process) to write every record through the two sinks,
    batch by batch."""
    events = RedisEventsSink(url, JsonlDeadLetters(dead), 50, prefix=prefix, sealer=sealer, capacity=10**7)
    sink = RedisSink(url, JsonlDeadLetters(dead), prefix=prefix, sealer=sealer, capacity=10**7)
    events.open()
    sink.open()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(summaries), 500):
            events.deliver(list(summaries[i:i + 500]))
        for i in range(0, len(others), 100):
            sink.deliver(list(others[i:i + 100]))
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        events.close()
        sink.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", default=None, help="a Redis to use (default: a private redis-server)")
    args = parser.parse_args(argv)
    n, summaries, others = records(args.customers, args.days)
    print(f"{n} events: {len(summaries)} timeline summaries, {len(others)} alerts and customer states")
    sealers = {"off": None, **{name: Sealer(PiiKeys.generate("p-bench", name)) for name in CONFIGS[1:]}}  # type: ignore[arg-type]
    for name, sealer in sealers.items():  # sealing alone, no Redis
        if sealer is None:
            continue
        start = time.perf_counter()
        for s in summaries:
            orjson.dumps(sealer.seal_record(s.to_dict(), s.event_id))
        took = time.perf_counter() - start
        print(f"sealing alone, {name}: {1e6 * took / len(summaries):.1f} us per summary")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp, server(args.redis, Path(tmp)) as url:
        for r in range(args.rounds):
            for name in CONFIGS:
                times[name].append(write_all(url, f"bench-crypto-{r}-{name}:", sealers[name], summaries, others,
                                             Path(tmp) / "dead.jsonl"))
    wall0, cpu0 = (statistics.median(t[k] for t in times["off"]) for k in (0, 1))
    for name in CONFIGS:
        wall, cpu = (statistics.median(t[k] for t in times[name]) for k in (0, 1))
        print(f"{name:12} {n / wall:10,.0f} events/s wall ({wall:.3f} s), {n / cpu:10,.0f} events/s of this "
              f"process's CPU ({cpu:.3f} s), medians of {args.rounds}"
              + ("" if name == "off" else f"; against off: {100 * (wall - wall0) / wall0:+.1f} % wall, "
                 f"{100 * (cpu - cpu0) / cpu0:+.1f} % CPU"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
