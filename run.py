"""Command line of the real-time CRM event-processing and alerting engine.

    python run.py                      the built-in simulator, alerts on the console
    python run.py replay --input ...   a recorded stream through the exact live logic
    python run.py live                 Kafka topics in, Kafka alerts out
    python run.py simulate --out ...   write a labelled simulated stream
    python run.py evaluate             simulate, replay, and report detection quality

Configuration: ``--config FILE`` (default ``config/default.toml``), then environment
variables ``CRM__<SECTION>__<KEY>``; see the README.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from config.settings import ConfigError, Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML configuration file (default: config/default.toml)")
    parser.add_argument("--workers", type=int, default=None,
                        help="Bytewax workers in this process (default: [engine] workers)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    sub = parser.add_subparsers(dest="command")

    replay = sub.add_parser("replay", help="process a recorded JSONL stream in event-time order",
                            description="Process a recorded stream (JSONL, optionally .gz) in event-time "
                            "order exactly as live processing would, and exit 0 when it is consumed.")
    _common(replay)
    replay.add_argument("--input", type=Path, required=True, help="events, one JSON object per line")
    replay.add_argument("--alerts-out", type=Path, help="alerts JSONL")
    replay.add_argument("--scores-out", type=Path, help="per-transaction scores JSONL")
    replay.add_argument("--state-out", type=Path, help="customer state JSONL, as of the last event time")
    replay.add_argument("--dead-letter-out", type=Path, help="rejected input with reasons JSONL")

    live = sub.add_parser("live", help="consume the Kafka topics and produce alerts to Kafka",
                          description="Consume the configured Kafka topics ([kafka] in the config) "
                          "and produce alerts and dead letters to their topics.")
    _common(live)
    live.add_argument("--bootstrap-servers", help="override [kafka] bootstrap_servers")
    live.add_argument("--quiet", action="store_true", help="do not print alerts to the console")
    live.add_argument("--alerts-out", type=Path, help="also write alerts to this JSONL file")
    live.add_argument("--dead-letter-out", type=Path, help="also write dead letters to this JSONL file")

    simulate = sub.add_parser("simulate", help="write a labelled simulated event stream",
                              description="Generate a deterministic simulated stream with injected "
                              "fraud and AML typologies, delayed feedback and ground truth.")
    simulate.add_argument("--customers", type=int, default=1000)
    simulate.add_argument("--days", type=float, default=30.0)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--fraud-rate", type=float, default=0.03,
                          help="share of customers hit by an injected typology")
    simulate.add_argument("--out", type=Path, required=True, help="events JSONL (.gz to compress)")
    simulate.add_argument("--truth-out", type=Path, help="ground truth per transaction JSONL")

    evaluate = sub.add_parser("evaluate", help="simulate, replay and report detection quality",
                              description="Generate a labelled stream, replay it through the engine "
                              "and print precision, recall, ROC AUC, average precision and detection "
                              "delay per typology and overall.")
    _common(evaluate)
    evaluate.add_argument("--customers", type=int, default=2000)
    evaluate.add_argument("--days", type=float, default=60.0)
    evaluate.add_argument("--seed", type=int, default=11)
    evaluate.add_argument("--fraud-rate", type=float, default=0.05)
    evaluate.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


def _graceful_stop() -> threading.Event:
    """The first SIGINT or SIGTERM ends the live sources: the dataflow drains what is in
    flight, sinks flush and close, and the process exits 0. A second one interrupts at once."""
    stop = threading.Event()

    def request(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"{signal.Signals(signum).name}: draining and stopping", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, request)
    signal.signal(signal.SIGTERM, request)
    return stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Live sources drain on a stop request; a replay, simulation or evaluation is stopped at once.
    stop = _graceful_stop() if args.command in (None, "live") else threading.Event()
    # A stop request surfaces as a Rust panic inside Bytewax; its backtrace is noise.
    os.environ["RUST_BACKTRACE"] = "0"
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args) if args.command != "simulate" else None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from flows import modes

    if args.command is None:
        assert settings is not None
        print("Running the built-in simulator; alerts follow. Ctrl-C stops.", file=sys.stderr)
        modes.run_demo(settings, stop, args.workers)
    elif args.command == "replay":
        assert settings is not None
        if not args.input.exists():
            print(f"input not found: {args.input}", file=sys.stderr)
            return 2
        modes.run_replay(settings, modes.ReplayPaths(
            args.input, args.alerts_out, args.scores_out, args.state_out, args.dead_letter_out),
            args.workers)
    elif args.command == "live":
        assert settings is not None
        if args.bootstrap_servers:
            settings = replace(settings, kafka=replace(settings.kafka, bootstrap_servers=args.bootstrap_servers))
        modes.run_live(settings, stop, console=not args.quiet, workers=args.workers,
                       alerts_path=args.alerts_out, dead_letter_path=args.dead_letter_out)
    elif args.command == "simulate":
        from simulator import SimulatorConfig, write_jsonl

        counts = write_jsonl(SimulatorConfig(customers=args.customers, days=args.days, seed=args.seed,
                                             fraud_rate=args.fraud_rate), args.out, args.truth_out)
        print(counts)
    elif args.command == "evaluate":
        assert settings is not None
        from bench.evaluate import evaluate

        evaluate(settings, customers=args.customers, days=args.days, seed=args.seed,
                 fraud_rate=args.fraud_rate, workdir=args.workdir, workers=args.workers)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # not drained: a replay cut short, or a second stop request
        print("interrupted", file=sys.stderr)
        sys.exit(130)
