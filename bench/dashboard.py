"""Dashboard pagination with 10,000 open alerts: prints figures (not a timed test).

    python -m bench.dashboard [--alerts 10000]

Starts a private redis-server, writes N alerts through the engine's Redis sink, lets the
dashboard index them, then times pages of the queue (first, middle, last; with and without
filters) and an alert's detail over HTTP, as a browser would ask for them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from schemas.outputs import Alert, Reason, format_ts
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisSink
from tests.dashboard_env import dashboard
from tests.live_engine import engine_settings, wait_for
from tests.services import redis_server

TYPES = ("suspicious_transaction", "account_takeover", "aml_pattern", "churn_risk", "complaint_escalation")
SEVERITIES = ("low", "medium", "high", "critical")


def alerts(n: int) -> list[Alert]:
    t0 = time.time() - n * 60
    return [Alert(f"al-{i:06d}", TYPES[i % 4], SEVERITIES[(i // 4) % 4],  # type: ignore[arg-type]
                  (i % 100) / 100, f"c{i:06d}",
                  f"rm{i % 20:03d}", f"e{i}", format_ts(t0 + i * 60), format_ts(t0 + i * 60),
                  (Reason("large_amount", f"amount {i} is large", float(i), 0.5),), "m1", group_key=f"g{i}")
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as srv:
        settings = engine_settings(srv.url, "bench:", Path(tmp))
        sink = RedisSink(srv.url, JsonlDeadLetters(Path(tmp) / "dead.jsonl"), prefix="bench:")
        sink.open()
        sink.write_batch(alerts(args.alerts))  # type: ignore[arg-type]
        sink.close()
        settings = replace(settings, dashboard=replace(settings.dashboard, page_size_max=200))
        with dashboard(settings, Path(tmp)) as dash:
            ana, _ = dash.login("ana")
            started = time.monotonic()
            wait_for(lambda: ana.get("/api/alerts?limit=1").json()["total"] == args.alerts, timeout=600, every=0.2)
            print(f"indexed {args.alerts} alerts in {time.monotonic() - started:.1f} s")
            last = (args.alerts // 50 - 1) * 50
            cases = {"first page (50)": "/api/alerts?limit=50",
                     "middle page (50)": f"/api/alerts?limit=50&offset={args.alerts // 2}",
                     "last page (50)": f"/api/alerts?limit=50&offset={last}",
                     "page of 200": "/api/alerts?limit=200",
                     "filtered type+severity, page 2": "/api/alerts?limit=50&offset=50&type=aml_pattern&severity=high",
                     "filtered, cache cold": None}
            ref = ana.get("/api/alerts?limit=1").json()["items"][0]["ref"]
            cases["alert detail"] = f"/api/alerts/{ref}"
            print(f"{'request':34} {'median ms':>10} {'p95 ms':>8} {'total':>6}")
            for name, path in cases.items():
                times = []
                total = 0
                for i in range(args.repeat):
                    url = path or f"/api/alerts?limit=50&type=churn_risk&severity=low&status=all&offset={i}"
                    if path is None:
                        time.sleep(2.1)  # the intersection cache (2 s) has expired
                    t = time.perf_counter()
                    reply = ana.get(url)
                    times.append((time.perf_counter() - t) * 1000)
                    assert reply.status_code == 200
                    total = reply.json().get("total", 1)
                times.sort()
                p95 = times[int(0.95 * (len(times) - 1))]
                print(f"{name:34} {statistics.median(times):10.1f} {p95:8.1f} {total:6}")


if __name__ == "__main__":
    main()
