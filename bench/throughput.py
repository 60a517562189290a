"""Replay throughput of the engine against the bare-loop reference (``make bench``).

    python -m bench.throughput [--customers 2000 --days 30 --rounds 3] [--metrics]

Generates the simulator's mixed stream (transactions, app events, feedback, profiles),
loads and validates it once, then alternates, ``rounds`` times:

- ``bare loop``: the same step objects called in a plain Python loop (``bench.bare_loop``);
- ``engine``: the Bytewax dataflow on one worker, reading the loaded stream and writing
  alerts, scores and customer state to JSONL files, as ``run.py replay`` does.

Both are timed from the first event to the last output (CPU time of this process and wall
time); the medians of the rounds and their ratio are printed. A final ``run.py replay``
subprocess gives the end-to-end figure including reading and parsing the file. Runs are
interleaved so that a noisy, shared machine slows both alike.

``--metrics`` measures the cost of the Prometheus metrics instead: it alternates the engine
without metrics and the engine with them wired (``ops.metrics.EngineMetrics`` on a fresh
registry: the observing steps and the step timers of ``--metrics-port``) and prints both
throughputs and the loss.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bare_loop import run_bare
from config.settings import load_settings
from flows.modes import ReplayPaths, execute, replay_flow, tune_gc
from flows.sources import ReplayInput, load_replay
from simulator import SimulatorConfig, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: object) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def run_engine(replay: ReplayInput, input_path: Path, out: Path, metrics: bool = False) -> None:
    """The replay dataflow over an already loaded stream, outputs to JSONL files; with
    ``metrics``, observed by a fresh ``EngineMetrics``."""
    from prometheus_client import CollectorRegistry

    from ops.metrics import EngineMetrics

    settings = load_settings()
    paths = ReplayPaths(input_path, out / "alerts.jsonl", out / "scores.jsonl", out / "state.jsonl")
    observer = EngineMetrics(CollectorRegistry(), ("replay",)) if metrics else None
    execute(replay_flow(settings, paths, replay, metrics=observer), settings, workers=1)


def compare_metrics(replay: ReplayInput, events: Path, work: Path, rounds: int) -> None:
    """Engine throughput without and with metrics, interleaved rounds, medians of wall and of
    CPU time (CPU time is steadier on a shared machine)."""
    n = len(replay.events)
    off: list[tuple[float, float]] = []
    on: list[tuple[float, float]] = []
    for _ in range(rounds):
        off.append(_timed(lambda: run_engine(replay, events, work)))
        on.append(_timed(lambda: run_engine(replay, events, work, metrics=True)))
    for i, clock in enumerate(("wall", "cpu")):
        off_rate = n / statistics.median(t[i] for t in off)
        on_rate = n / statistics.median(t[i] for t in on)
        print(f"{clock}: engine without metrics {off_rate:,.0f} events/s, with metrics {on_rate:,.0f} events/s, "
              f"loss {100 * (1 - on_rate / off_rate):.1f}% (medians of {rounds} rounds; per round without "
              f"{[f'{n / t[i]:,.0f}' for t in off]}, with {[f'{n / t[i]:,.0f}' for t in on]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metrics", action="store_true", help="measure the overhead of the metrics instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        events = work / "events.jsonl"
        counts = write_jsonl(SimulatorConfig(customers=args.customers, days=args.days, seed=args.seed,
                                             fraud_rate=0.03), events)
        replay = load_replay(events)
        tune_gc()  # as the engine runs (flows.modes.execute), for the bare loop too
        n = len(replay.events)
        print(f"stream: {n:,} events {counts['by_kind']}")
        if args.metrics:
            compare_metrics(replay, events, work, args.rounds)
            return
        bare: list[tuple[float, float]] = []
        engine: list[tuple[float, float]] = []
        settings = load_settings()
        for _ in range(args.rounds):
            bare.append(_timed(lambda: run_bare(settings, replay)))
            engine.append(_timed(lambda: run_engine(replay, events, work)))
        e2e = _timed(lambda: subprocess.run(
            [sys.executable, "run.py", "replay", "--input", str(events), "--alerts-out",
             str(work / "a.jsonl"), "--scores-out", str(work / "s.jsonl"), "--state-out",
             str(work / "t.jsonl")], cwd=ROOT, check=True))
    bare_wall = statistics.median(w for w, _ in bare)
    engine_wall = statistics.median(w for w, _ in engine)
    print(f"{'':<34}{'events/s (wall)':>16}{'events/s (cpu)':>16}")
    print(f"{'bare loop (reference)':<34}{n / bare_wall:>16,.0f}"
          f"{n / statistics.median(c for _, c in bare):>16,.0f}")
    print(f"{'engine, Bytewax, 1 worker':<34}{n / engine_wall:>16,.0f}"
          f"{n / statistics.median(c for _, c in engine):>16,.0f}")
    print(f"{'run.py replay end to end':<34}{n / e2e[0]:>16,.0f}{'':>16}")
    print(f"engine / bare loop (median wall): {bare_wall / engine_wall:.2f}  "
          f"(rounds: {args.rounds}; per round engine {[f'{n / w:,.0f}' for w, _ in engine]}, "
          f"bare {[f'{n / w:,.0f}' for w, _ in bare]})")


if __name__ == "__main__":
    main()
