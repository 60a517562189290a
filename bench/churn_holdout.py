"""Churn score against BG/NBD on a purchase history cut at a date (transactions only).

The check: replay every purchase before ``cutoff`` through the engine exactly as
``run.py replay --state-out`` does, take each customer's ``churn_score`` as of the last
event time of that history (the replay's watermark), and score it (ROC AUC, higher = will
not buy again) against whether the customer buys again in the ``horizon_days`` after the
cutoff. The benchmark is the classic BG/NBD model (Fader, Hardie and Lee 2005, "Counting
your customers the easy way"), fitted by maximum likelihood on the same history (within
the bounds of ``detectors.bgnbd``; the parameters held at one are printed), ranking
customers by minus their expected number of purchases in the horizon. Purchases are
counted per day, as BG/NBD is usually fitted.

Real data: the CDNOW master file (23,570 customers of an online CD retailer, Jan 1997 to
Jun 1998) that the PyPI package ``lifetimes`` ships; ``requirements-dev.txt`` pins it and the
file is read from the installed package (it is not imported)::

    python -m bench.churn_holdout --cdnow                  # cutoff 1997-10-01, 9 months after
    python -m bench.churn_holdout --simulator --customers 2000 --days 120

``--simulator`` keeps only the transactions of a simulated stream and cuts it in the middle.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from bench.metrics import roc_auc
from config.settings import Settings, load_settings
from detectors.bgnbd import BGNBD, fit_bgnbd
from flows.modes import ReplayPaths, run_replay
from schemas.events import parse_timestamp
from schemas.outputs import format_ts

DAY = 86400.0
WEEK = 7 * DAY


def cdnow_path() -> Path:
    """The CDNOW master file inside the installed ``lifetimes`` package (not imported)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the CDNOW data comes with the package lifetimes: "
                         "pip install -r requirements-dev.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"


def cdnow_events(path: Path) -> list[dict]:
    """CDNOW purchases as transaction events (customer, date at noon UTC, dollar value)."""
    events = []
    for i, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        customer, date, _cds, value = fields
        day = datetime.strptime(date, "%Y%m%d").replace(hour=12, tzinfo=UTC)
        events.append({"kind": "transaction", "event_id": f"cd{i}", "ts": format_ts(day.timestamp()),
                       "customer_id": f"c{customer}", "amount": float(value)})
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events


def rfm(events: Iterable[dict], now: float) -> dict[str, tuple[int, float, float]]:
    """Per customer: repeat purchase days x, recency t_x and age T (weeks) as of ``now``."""
    days: dict[str, list[float]] = {}
    for e in events:
        t = parse_timestamp(e["ts"])
        day = math.floor(t / DAY) * DAY
        seen = days.setdefault(e["customer_id"], [])
        if not seen or seen[-1] != day:
            seen.append(day)
    return {c: (len(d) - 1, (d[-1] - d[0]) / WEEK, (now - d[0]) / WEEK) for c, d in days.items()}


# --- the check ------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """One comparison."""

    customers: int
    buyers_again: int
    churn_auc: float
    bgnbd_auc: float
    bgnbd: BGNBD
    replay_seconds: float  # the engine's replay of the history, the fit of its priors included


def holdout(events: list[dict], cutoff: float, horizon_days: float, settings: Settings,
            workdir: Path | None = None) -> Result:
    """Replay the history before ``cutoff`` and compare ``churn_score`` with BG/NBD."""
    history = [e for e in events if parse_timestamp(e["ts"]) < cutoff]
    end = cutoff + horizon_days * DAY
    again = {e["customer_id"] for e in events if cutoff <= parse_timestamp(e["ts"]) < end}
    with tempfile.TemporaryDirectory() as tmp:
        out = workdir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        stream, states = out / "history.jsonl", out / "state.jsonl"
        stream.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in history))
        started = time.perf_counter()
        run_replay(settings, ReplayPaths(stream, state=states))
        replay_seconds = time.perf_counter() - started
        lines = [orjson.loads(line) for line in states.read_bytes().splitlines() if line]
    score = {s["customer_id"]: s["churn_score"] for s in lines}
    watermark = max(parse_timestamp(e["ts"]) for e in history)
    stats = rfm(history, watermark)
    customers = sorted(stats)
    x, t_x, T = (np.array([stats[c][i] for c in customers], dtype=float) for i in range(3))
    model = fit_bgnbd(x, t_x, T)
    expected = model.expected((end - watermark) / WEEK, x, t_x, T)
    lapsed = [0 if c in again else 1 for c in customers]
    return Result(len(customers), len(customers) - sum(lapsed),
                  roc_auc(lapsed, [score[c] for c in customers]),
                  roc_auc(lapsed, [-float(v) for v in expected]), model, replay_seconds)


def simulator_events(customers: int, days: float, seed: int, workdir: Path) -> list[dict]:
    """The transactions of a simulated stream (no app events, no feedback)."""
    from simulator import SimulatorConfig, write_jsonl

    path = workdir / "sim.jsonl"
    write_jsonl(SimulatorConfig(customers=customers, days=days, seed=seed), path, None)
    return [e for e in map(orjson.loads, path.read_bytes().splitlines())
            if e.get("kind") == "transaction"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cdnow", action="store_true", help="the CDNOW master file from lifetimes")
    source.add_argument("--input", type=Path, help="transactions JSONL")
    source.add_argument("--simulator", action="store_true", help="a simulated stream, cut in the middle")
    parser.add_argument("--cutoff", help="RFC 3339 (default: 1997-10-01 for CDNOW, else the middle)")
    parser.add_argument("--horizon-days", type=float, default=273.0, help="about nine months")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    # The engine's fit of the churn priors says what it took and where it stopped.
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("detectors.churn").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.cdnow:
            events = cdnow_events(cdnow_path())
            cutoff = parse_timestamp(args.cutoff or "1997-10-01T00:00:00Z")
        else:
            events = (simulator_events(args.customers, args.days, args.seed, work) if args.simulator
                      else [orjson.loads(line) for line in args.input.read_bytes().splitlines() if line])
            times = [parse_timestamp(e["ts"]) for e in events]
            cutoff = parse_timestamp(args.cutoff) if args.cutoff else (min(times) + max(times)) / 2
        horizon = args.horizon_days if not args.simulator else min(args.horizon_days, args.days / 2)
        result = holdout(events, cutoff, horizon, settings, args.workdir)
    m = result.bgnbd
    print(f"{result.customers} customers, {result.buyers_again} buy again within {horizon:g} days "
          f"of {format_ts(cutoff)}")
    bounds = [f"{name} at its {side} bound" for side, names in (("upper", m.at_upper), ("lower", m.at_lower))
              for name in names]
    print(f"BG/NBD fit: r={m.r:.4f} alpha={m.alpha:.4f} a={m.a:.4f} b={m.b:.4f} (weeks)"
          + (f"; {', '.join(bounds)}" if bounds else ""))
    print(f"ROC AUC (lapse): churn_score {result.churn_auc:.4f}  BG/NBD -E[X] {result.bgnbd_auc:.4f}")
    print(f"the engine's replay of the history: {result.replay_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
