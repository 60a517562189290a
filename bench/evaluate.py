"""Detection quality on a labelled simulator stream (``python run.py evaluate``).

Generates a stream with injected typologies, replays it through the engine exactly as
``run.py replay`` does, and joins the per-transaction scores and alerts with the ground
truth. Reports, overall and per typology: ROC AUC and average precision of ``fraud_score``
(the typology's fraud transactions against all legitimate ones), recall of alerts, the
share of cases caught, and detection delay (first fraudulent transaction of a case to the
first alert on it); overall alert precision. Churn: ROC AUC of each customer's
``churn_score`` as of the last event time against the ``churned`` labels, and the median lead
time from a churner's first ``churn_risk`` alert to their last activity. Scores are learned online: the first days
run before any feedback has arrived, as in production.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from bench.metrics import average_precision, roc_auc
from config.settings import Settings
from flows.modes import ReplayPaths, run_replay
from schemas.events import parse_timestamp
from schemas.outputs import RM_ALERTS
from simulator import SimulatorConfig, write_jsonl


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    name: str
    positives: int
    auc: float
    ap: float
    recall: float
    cases: int
    cases_caught: int
    median_delay_min: float | None


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def report(truth_path: Path, scores_path: Path, alerts_path: Path) -> tuple[list[Row], float]:
    """Rows per typology and overall, and the overall alert precision."""
    truth = {t["event_id"]: t for t in _read(truth_path)}
    scores = {s["event_id"]: s["fraud_score"] for s in _read(scores_path)}
    first_alert: dict[str, float] = {}
    alerted: set[str] = set()
    for alert in _read(alerts_path):
        if alert["type"] not in RM_ALERTS:  # the RMs' alerts are left out of the fraud figures
            alerted.add(alert["event_id"])
    legit = [eid for eid, t in truth.items() if not t["is_fraud"]]
    by_typology: dict[str, list[str]] = defaultdict(list)
    for eid, t in truth.items():
        if t["is_fraud"]:
            by_typology[t["typology"]].append(eid)
            if eid in alerted:
                case_t = parse_timestamp(t["ts"])
                first_alert[t["case_id"]] = min(first_alert.get(t["case_id"], case_t), case_t)
    rows = [_row(name, ids, legit, truth, scores, alerted, first_alert)
            for name, ids in sorted(by_typology.items())]
    all_fraud = [eid for ids in by_typology.values() for eid in ids]
    rows.append(_row("overall", all_fraud, legit, truth, scores, alerted, first_alert))
    hits = sum(1 for eid in alerted if truth.get(eid, {}).get("is_fraud"))
    return rows, hits / len(alerted) if alerted else 0.0


@dataclass(frozen=True)
class ChurnRow:
    """Churn quality: the score as of the watermark against the ``churned`` labels."""

    customers: int
    churned: int
    auc: float
    alerted_churners: int
    median_lead_days: float | None
    alerted_others: int


def churn_report(events_path: Path, state_path: Path, alerts_path: Path) -> ChurnRow:
    """ROC AUC of ``churn_score`` (customer state, as of the last event time) for the customers
    labelled ``churned``, and the lead time from a churner's first ``churn_risk`` alert to
    their last activity (alerts after it do not count)."""
    churned: set[str] = set()
    last_activity: dict[str, float] = {}
    for e in _read(events_path):
        if e["kind"] == "feedback" and e["label"] == "churned":
            churned.add(e["customer_id"])
        elif e["kind"] in ("transaction", "app"):
            last_activity[e["customer_id"]] = parse_timestamp(e["ts"])
    scores = {s["customer_id"]: s["churn_score"] for s in _read(state_path)}
    customers = sorted(scores)
    auc = roc_auc([1 if c in churned else 0 for c in customers], [scores[c] for c in customers])
    first_alert: dict[str, float] = {}
    for alert in _read(alerts_path):
        if alert["type"] == "churn_risk":
            c, t = alert["customer_id"], parse_timestamp(alert["event_ts"])
            first_alert[c] = min(first_alert.get(c, t), t)
    leads = [(last_activity[c] - first_alert[c]) / 86400.0 for c in churned
             if c in first_alert and c in last_activity and first_alert[c] <= last_activity[c]]
    return ChurnRow(len(customers), len(churned), auc, len(leads),
                    statistics.median(leads) if leads else None,
                    sum(1 for c in first_alert if c not in churned))


def print_churn(row: ChurnRow) -> None:
    lead = f"{row.median_lead_days:.1f} d" if row.median_lead_days is not None else "-"
    print(f"churn: {row.churned} of {row.customers} customers labelled churned; ROC AUC of churn_score "
          f"{row.auc:.3f}; churners alerted before leaving {row.alerted_churners}, median lead {lead}; "
          f"other customers alerted {row.alerted_others}")


def _row(name: str, fraud_ids: list[str], legit_ids: list[str], truth: dict[str, dict],
         scores: dict[str, float], alerted: set[str], first_alert: dict[str, float]) -> Row:
    ids = fraud_ids + legit_ids
    labels = [1] * len(fraud_ids) + [0] * len(legit_ids)
    values = [scores.get(eid, 0.0) for eid in ids]
    case_start: dict[str, float] = {}
    for eid in fraud_ids:
        case, t = truth[eid]["case_id"], parse_timestamp(truth[eid]["ts"])
        case_start[case] = min(case_start.get(case, t), t)
    delays = [(first_alert[c] - start) / 60.0 for c, start in case_start.items() if c in first_alert]
    return Row(name, len(fraud_ids), roc_auc(labels, values), average_precision(labels, values),
               sum(1 for eid in fraud_ids if eid in alerted) / max(1, len(fraud_ids)),
               len(case_start), len(delays), statistics.median(delays) if delays else None)


def print_report(rows: list[Row], precision: float, seconds: float, n_events: int) -> None:
    print(f"{'typology':<20}{'frauds':>8}{'ROC AUC':>9}{'AP':>8}{'recall':>8}{'cases':>7}"
          f"{'caught':>8}{'median delay':>14}")
    for r in rows:
        delay = f"{r.median_delay_min:.1f} min" if r.median_delay_min is not None else "-"
        print(f"{r.name:<20}{r.positives:>8}{r.auc:>9.3f}{r.ap:>8.3f}{r.recall:>8.2f}{r.cases:>7}"
              f"{r.cases_caught:>8}{delay:>14}")
    print(f"alert precision (alerted transactions that are fraud): {precision:.3f}")
    print(f"replay: {n_events} events in {seconds:.1f} s ({n_events / seconds:,.0f} events/s)")


def evaluate(settings: Settings, customers: int, days: float, seed: int, fraud_rate: float,
             workdir: Path | None = None, workers: int | None = None) -> list[Row]:
    """Simulate, replay, report; return the rows. Every trigger counts: the alert lifecycle
    (de-duplication, grouping) is off, as it is about delivery, not detection."""
    view = settings.view
    settings = replace(settings, view=replace(view, lifecycle=replace(view.lifecycle, enabled=False)))
    with tempfile.TemporaryDirectory() as tmp:
        out = workdir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        events, truth = out / "events.jsonl", out / "truth.jsonl"
        counts = write_jsonl(SimulatorConfig(customers=customers, days=days, seed=seed,
                                             fraud_rate=fraud_rate), events, truth)
        paths = ReplayPaths(events, out / "alerts.jsonl", out / "scores.jsonl", out / "state.jsonl",
                            out / "dead_letters.jsonl")
        started = time.perf_counter()
        run_replay(settings, paths, workers)
        seconds = time.perf_counter() - started
        rows, precision = report(truth, paths.scores, paths.alerts)  # type: ignore[arg-type]
        print(f"simulated {customers} customers over {days:g} days (seed {seed}): {counts['events']} events")
        print_report(rows, precision, seconds, counts["events"])
        print_churn(churn_report(events, paths.state, paths.alerts))  # type: ignore[arg-type]
        return rows
