"""Replay throughput of the engine, against the bare loop and a simple online reference (``make bench``).

    python -m bench.throughput [--stream mixed|card] [--customers N --days D] [--rounds 3] [--no-voice]
    python -m bench.throughput --input EVENTS.jsonl[.gz] [--rounds 3]
    python -m bench.throughput --metrics [--customers 1000 --days 14]
    python -m bench.throughput --features [--stream card] [--baseline DIR] [--rounds 5]

Streams: ``mixed`` is the simulator's (transactions, app events, feedback, profiles; 2,000
customers, 30 days by default); ``card`` is a card issuer's (``bench.cardsim``: card payments
at terminals and ``fraud``/``legit`` feedback 7 days later; 5,000 customers, 10,000
terminals, 60 days by default); ``--input`` takes a recorded file. Each round runs, one after
the other, on the same file:

- ``bare loop``: the engine's per-event logic (``engine.shard.Shard``) in a plain loop over
  the loaded stream (``bench.bare_loop``), in this process;
- ``engine``: the Bytewax dataflow on one worker over the loaded stream, writing alerts,
  scores and customer state to JSONL files as ``run.py replay`` does, in this process;
- ``run.py replay``: the whole process, file reading and parsing included, as a user runs it;
- ``reference``: ``bench.reference``, the 60-line online script a card issuer would write
  first (1/7/30-day spend windows, terminal fraud rate, River logistic regression), as a
  whole process on the same file.

The first two are timed from the first event to the last output (wall and CPU time of this
process), the last two as whole processes (wall). Rounds alternate so that a noisy, shared
machine slows every kind alike; medians and their ratios are printed.

``--features`` measures what customer voice and the fairness tracking cost instead: whole
``run.py replay`` processes with both off, and on (the defaults), alternating, CPU time of
every thread; ``--baseline DIR`` adds the same command run from a checkout of an earlier
release, to see the optional features' cost when off.

``--metrics`` measures the cost of the Prometheus metrics instead: it alternates the engine
without metrics and the engine with them wired (``ops.metrics.EngineMetrics`` on a fresh
registry, as ``--metrics-port`` wires it) and prints both throughputs and the loss. It
leaves out Bytewax's own dataflow API (``--bytewax-api-port``): Bytewax 0.21 can start it once
per process only (a second dataflow fails with "Duplicate metrics collector registration
attempted"), so its cost is measured on whole ``run.py replay`` processes instead (README).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bare_loop import run_bare
from bench.cardsim import SimConfig, simulate, write_events
from config.settings import load_settings
from flows import collector
from flows.modes import ReplayPaths, execute, replay_flow
from flows.sources import ReplayInput, load_replay
from simulator import SimulatorConfig, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_engine(replay: ReplayInput, input_path: Path, out: Path, metrics: bool = False,
               environ: dict[str, str] | None = None) -> None:
    """The replay dataflow over an already loaded stream, outputs to JSONL files; with
    ``metrics``, observed by a fresh ``EngineMetrics``; ``environ``: configuration overrides."""
    from prometheus_client import CollectorRegistry

    from ops.metrics import EngineMetrics

    settings = load_settings(environ=environ)
    paths = ReplayPaths(input_path, out / "alerts.jsonl", out / "scores.jsonl", out / "state.jsonl")
    observer = EngineMetrics(CollectorRegistry(), ("replay",)) if metrics else None
    execute(replay_flow(settings, paths, replay, metrics=observer), settings, workers=1)


def run_process(args: list[str], environ: dict[str, str] | None = None) -> None:
    env = {**os.environ, **environ} if environ else None
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)


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


#: What ``--features`` turns off: customer voice's scorer and the fairness tracking (the
#: encryption at rest is off by default and costs in the Redis sinks: ``bench.crypto``; case
#: work is the dashboard's).
FEATURES_OFF = {"CRM__VIEW__VOICE__ENABLED": "false", "CRM__NBA__FAIRNESS__ENABLED": "false"}


def process_times(args: list[str], environ: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU time (user + system, every thread) of a whole process."""
    wall = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env={**os.environ, **environ},
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise subprocess.CalledProcessError(status, args)
    return time.perf_counter() - wall, usage.ru_utime + usage.ru_stime


def compare_features(events: Path, n: int, work: Path, rounds: int, baseline: Path | None) -> None:
    """``run.py replay`` processes with the optional features off and on (the defaults), and
    optionally an earlier release's (a checkout at ``baseline``), alternating their order
    round by round; medians of CPU and wall time."""
    kinds = {"features off": (ROOT, FEATURES_OFF), "features on (defaults)": (ROOT, {})}
    if baseline is not None:
        kinds = {f"baseline ({baseline.name})": (baseline.resolve(), {}), **kinds}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
    for r in range(rounds):
        for name in (list(kinds) if r % 2 == 0 else list(reversed(kinds))):
            cwd, environ = kinds[name]
            out = work / name.split()[0]
            outputs = ["--alerts-out", str(out / "a.jsonl"), "--prompts-out", str(out / "p.jsonl"),
                       "--scores-out", str(out / "s.jsonl"), "--dead-letter-out", str(out / "d.jsonl")]
            times[name].append(process_times(["run.py", "replay", "--log-level", "WARNING", "--input",
                                              str(events), *outputs], environ, cwd))
    first = next(iter(kinds))
    reference = statistics.median(c for _, c in times[first])
    for name, ts in times.items():
        cpu = statistics.median(c for _, c in ts)
        dead = (work / name.split()[0] / "d.jsonl").read_bytes().count(b"\n")
        print(f"{name:<28} {n / cpu:>9,.0f} events/s of CPU ({100 * (reference / cpu - 1):+.1f} % against "
              f"{first}), {n / statistics.median(w for w, _ in ts):>9,.0f} of wall; {dead} dead letters; "
              f"CPU s per round {[round(c, 2) for _, c in ts]}")


def make_stream(args: argparse.Namespace, work: Path) -> Path:
    """The stream to measure: ``--input``, or one generated into ``work``."""
    if args.input is not None:
        return Path(args.input)
    events = work / "events.jsonl"
    if args.stream == "card":
        config = SimConfig(customers=args.customers or 5000, terminals=args.terminals,
                           days=int(args.days or 60), seed=args.seed)
        write_events(simulate(config), config, events)
    else:
        write_jsonl(SimulatorConfig(customers=args.customers or 2000, days=args.days or 30.0, seed=args.seed,
                                    fraud_rate=0.03, voice_texts=args.voice), events)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", choices=("mixed", "card"), default="mixed")
    parser.add_argument("--input", type=Path, help="a recorded stream instead of a generated one")
    parser.add_argument("--customers", type=int, help="default: 2,000 (mixed), 5,000 (card)")
    parser.add_argument("--terminals", type=int, default=10_000, help="card stream")
    parser.add_argument("--days", type=float, help="default: 30 (mixed), 60 (card)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metrics", action="store_true", help="measure the overhead of the metrics instead")
    parser.add_argument("--features", action="store_true",
                        help="measure what customer voice and the fairness tracking cost instead: run.py replay "
                        "with both off and on, alternating")
    parser.add_argument("--baseline", type=Path, help="with --features: also run.py replay from this checkout "
                        "of an earlier release (git worktree add DIR REV)")
    parser.add_argument("--voice", action=argparse.BooleanOptionalAction, default=True,
                        help="customer voice: the mixed stream's chat texts and the engine's scorer "
                        "([view.voice] enabled); --no-voice turns both off")
    args = parser.parse_args()
    environ = None if args.voice else {"CRM__VIEW__VOICE__ENABLED": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        events = make_stream(args, work)
        replay = load_replay(events)
        collector.start()  # as the engine runs (flows.modes.execute), for the bare loop too
        n = len(replay.events)
        print(f"stream: {n:,} events from {events.name}")
        if args.metrics:
            compare_metrics(replay, events, work, args.rounds)
            return
        if args.features:
            compare_features(events, n, work, args.rounds, args.baseline)
            return
        settings = load_settings(environ=environ)
        outputs = ["--alerts-out", str(work / "a.jsonl"), "--scores-out", str(work / "s.jsonl"),
                   "--state-out", str(work / "t.jsonl"), "--dead-letter-out", str(work / "d.jsonl")]
        replay_args = ["run.py", "replay", "--input", str(events), *outputs]
        reference_args = ["-m", "bench.reference", "--input", str(events), "--scores-out", str(work / "r.jsonl")]
        kinds: dict[str, Callable[[], object]] = {
            "bare loop (in process)": lambda: run_bare(settings, replay),
            "engine, Bytewax, 1 worker (in process)": lambda: run_engine(replay, events, work, environ=environ),
            "run.py replay (whole process)": lambda: run_process(replay_args, environ),
            "reference (whole process)": lambda: run_process(reference_args),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            for name, run in kinds.items():
                times[name].append(_timed(run))
    wall = {name: statistics.median(w for w, _ in ts) for name, ts in times.items()}
    print(f"{'':<42}{'events/s (wall)':>16}{'events/s (cpu)':>16}   per round (wall)")
    for name, ts in times.items():
        cpu = f"{n / statistics.median(c for _, c in ts):>16,.0f}" if "in process" in name else f"{'':>16}"
        print(f"{name:<42}{n / wall[name]:>16,.0f}{cpu}   {[f'{n / w:,.0f}' for w, _ in ts]}")
    names = list(kinds)
    print(f"engine / bare loop: {wall[names[0]] / wall[names[1]]:.2f}; "
          f"run.py replay / reference: {wall[names[3]] / wall[names[2]]:.2f} (medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
