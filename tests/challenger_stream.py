"""A stream on which the gradient-boosted challenger must beat the logistic champion, and
fraud settings under which it is trained, evaluated and promoted within that stream."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from detectors.challengers import ChampionParams, TreesParams
from detectors.fraud import FraudParams

DAY = 86400.0


def xor_events(customers: int = 150, days: int = 12, seed: int = 7) -> list[dict[str, Any]]:
    """Card payments whose frauds are night XOR abroad (an interaction a linear model cannot
    represent), each labelled a day later; in time order."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = []
    for c in range(customers):
        t = start + timedelta(minutes=rng.randrange(600))
        for n in range(days * 4):
            t += timedelta(hours=rng.expovariate(1 / 6))
            night, foreign = rng.random() < 0.25, rng.random() < 0.25
            # Night is local (UTC+8) 0-6 h: 16-22 h UTC.
            when = t.replace(hour=rng.randrange(16, 22)) if night else t.replace(hour=rng.randrange(1, 13))
            txn_id = f"t{c}-{n}"
            events.append((when, {"kind": "transaction", "event_id": txn_id, "customer_id": f"c{c}",
                                  "amount": round(rng.uniform(20, 200), 2), "counterparty_id": f"m{rng.randrange(50)}",
                                  "counterparty_country": "US" if foreign else "CN", "txn_type": "card_payment"}))
            events.append((when + timedelta(days=1), {
                "kind": "feedback", "event_id": f"f{c}-{n}", "customer_id": f"c{c}",
                "label": "fraud" if night != foreign else "legit", "ref_event_id": txn_id}))
    events.sort(key=lambda pair: (pair[0], pair[1]["kind"] != "transaction"))
    for when, event in events:
        event["ts"] = when.isoformat().replace("+00:00", "Z")
    return [event for _, event in events]


def quick_challenger(fraud: FraudParams) -> FraudParams:
    """Train twice a day (installed an hour later), evaluate twice a day on the last 3,000
    labels, promote after two evaluations in a row."""
    return replace(fraud,
                   gbm=TreesParams(retrain_every_s=DAY / 2, install_after_s=3600.0, min_frauds=20, rounds=40,
                                   min_data_in_leaf=10),
                   champion=ChampionParams(evaluate_every_s=DAY / 2, window_labels=3000, min_labels=300,
                                           min_frauds=50, patience=2))
