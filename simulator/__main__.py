"""Record a simulated stream: ``python -m simulator --out events.jsonl.gz --truth truth.jsonl``.

Prints the counts returned by ``write_jsonl`` as one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from simulator.generator import SimulatorConfig, write_jsonl


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, write the files, print the counts; returns the exit status."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--out", required=True, help="events JSONL (.gz for gzip)")
    parser.add_argument("--truth", help="ground-truth JSONL for every transaction (.gz for gzip)")
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--days", type=float, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fraud-rate", type=float, default=defaults.fraud_rate)
    parser.add_argument("--churn-rate", type=float, default=defaults.churn_rate)
    parser.add_argument("--legit-feedback-rate", type=float, default=defaults.legit_feedback_rate)
    parser.add_argument("--no-app-events", action="store_true", help="transactions only")
    args = parser.parse_args(argv)
    config = SimulatorConfig(customers=args.customers, days=args.days, seed=args.seed,
                             fraud_rate=args.fraud_rate, churn_rate=args.churn_rate,
                             legit_feedback_rate=args.legit_feedback_rate,
                             app_events=not args.no_app_events)
    counts = write_jsonl(config, args.out, args.truth)
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
