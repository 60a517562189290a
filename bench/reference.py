"""The simple online reference a card issuer would write first, to measure the engine against.

    python -m bench.reference --input cards.jsonl[.gz] [--scores-out S.jsonl]

One loop over the stream: per customer, 1-, 7- and 30-day spend windows; per terminal, the
fraud rate of the labels known so far; a River logistic regression that scores each
transaction, then learns it when its ``fraud``/``legit`` label arrives. No rules, no
anomaly model, no explanations, no recovery: what the engine is held to per process
(``bench.card_throughput`` times both on the same file in one run).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from pathlib import Path

import orjson
from river import linear_model, optim, preprocessing

from flows.sources import read_lines
from schemas.events import parse_timestamp

DAY = 86_400.0
SPANS = (DAY, 7 * DAY, 30 * DAY)


def run(path: Path, scores_out: Path | None = None) -> int:
    """Score every transaction of ``path``; the number of events read."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.01))
    windows: dict[str, deque[tuple[float, float]]] = {}
    terminals: dict[str, list[int]] = {}  # terminal -> [frauds, labels]
    waiting: dict[str, tuple[dict[str, float], str | None]] = {}
    out = open(scores_out, "wb") if scores_out else None  # noqa: SIM115
    n = 0
    for _, raw in read_lines(path):
        event = orjson.loads(raw)
        n += 1
        if event["kind"] == "transaction":
            t, amount = parse_timestamp(event["ts"]), float(event["amount"])
            window = windows.setdefault(event["customer_id"], deque())
            while window and window[0][0] <= t - SPANS[-1]:
                window.popleft()
            x = {"log_amount": math.log1p(amount)}
            for span in SPANS:
                recent = [a for ts, a in window if ts > t - span]
                x[f"n_{span:.0f}"] = len(recent)
                x[f"ratio_{span:.0f}"] = amount / (sum(recent) / len(recent) + 1.0) if recent else 1.0
            terminal = event.get("counterparty_id")
            frauds, labels = terminals.get(terminal, (0, 0)) if terminal else (0, 0)
            x["terminal_rate"] = (frauds + 0.01) / (labels + 1.0)
            score = model.predict_proba_one(x).get(True, 0.0)
            waiting[event["event_id"]] = (x, terminal)
            window.append((t, amount))
            if out is not None:
                out.write(orjson.dumps({"event_id": event["event_id"], "fraud_score": score}) + b"\n")
        elif event["kind"] == "feedback" and event.get("ref_event_id") in waiting:
            x, terminal = waiting.pop(event["ref_event_id"])
            fraud = event["label"] == "fraud"
            model.learn_one(x, fraud)
            if terminal:
                counts = terminals.setdefault(terminal, [0, 0])
                counts[0] += fraud
                counts[1] += 1
    if out is not None:
        out.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--scores-out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    n = run(args.input, args.scores_out)
    elapsed = time.perf_counter() - started
    print(f"{n:,} events in {elapsed:.1f} s: {n / elapsed:,.0f} events/s")


if __name__ == "__main__":
    main()
