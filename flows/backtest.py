"""A rule back-test: a recorded stream replayed through the engine with a changed rule
threshold, next to the current one, before the change is applied.

Both runs go through ``engine.shard.Shard`` (the per-event logic the dataflow's step and the
bare loop call) over the same validated, event-time-ordered events a replay reads
(``flows.sources.load_replay``), in the replay source's batches: the alerts are the ones a
replay with one worker writes. Nothing is re-implemented; only the settings differ.

What is counted, per run, for the fraud alert types (``suspicious_transaction``,
``account_takeover``, ``aml_pattern``; churn warnings are not fraud alerts):

- ``alerts``: alert groups (what an analyst sees: the first alert and its revisions, by
  ``group_key``), and ``revisions``, the alert records the engine emitted;
- ``true_positives``: groups of which some revision's triggering transaction is labelled
  ``fraud`` by a feedback event of the stream (``ref_event_id``); ``legit_labelled``: the
  other groups that some ``legit`` label names; the rest are unlabelled;
- ``precision``: ``true_positives / alerts`` (an unlabelled alert counts as not fraud: the
  labels of the stream are the truth it has), and ``labelled_precision``:
  ``true_positives / (true_positives + legit_labelled)``;
- ``recall``: the share of the fraud-labelled transactions that triggered an alert revision.

The labels are read from the stream, never from a truth file: the back-test measures what
the engine's own feedback says.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from config.settings import Settings
from engine.shard import Shard
from flows.modes import engine_config, event_clock
from flows.sources import ReplaySource, load_replay
from schemas.events import Event, Feedback
from schemas.outputs import Alert

FRAUD_ALERT_TYPES: Final = frozenset({"suspicious_transaction", "account_takeover", "aml_pattern"})
SECTIONS: Final = ("rules",)  # the settings a back-test may change


class BadChange(ValueError):
    """A ``--set`` that names no rule threshold or gives it a value of the wrong type."""


@dataclass(frozen=True)
class Change:
    """One changed setting: ``rules.KEY=VALUE``, typed as the setting is."""

    section: str
    key: str
    value: float | int | bool

    def __str__(self) -> str:
        return f"{self.section}.{self.key}={self.value}"


def parse_change(text: str, settings: Settings) -> Change:
    """``rules.KEY=VALUE`` as a ``Change``, checked against the settings' fields.

    >>> from config.settings import Settings
    >>> parse_change("rules.velocity_1h=6", Settings())
    Change(section='rules', key='velocity_1h', value=6)
    >>> parse_change("rules.large_amount_ratio=3.5", Settings()).value
    3.5
    >>> parse_change("rules.nope=1", Settings())
    Traceback (most recent call last):
    ...
    flows.backtest.BadChange: rules.nope: not a key of [rules] (one of card_testing_small_1h, ...)
    """
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or section not in SECTIONS:
        raise BadChange(f"{text!r}: expected {'|'.join(SECTIONS)}.KEY=VALUE")
    current = getattr(settings, section)
    fields = {f.name for f in dataclasses.fields(current)}
    if key not in fields:
        raise BadChange(f"{section}.{key}: not a key of [{section}] (one of {min(fields)}, ...)")
    old = getattr(current, key)
    try:
        value: float | int | bool
        if isinstance(old, bool):
            value = {"true": True, "false": False}[raw.strip().lower()]
        elif isinstance(old, int):
            value = int(raw)
        else:
            value = float(raw)
    except (KeyError, ValueError):
        raise BadChange(f"{section}.{key}: {raw!r} is not a {type(old).__name__}") from None
    if math.isnan(value) or value < 0:
        raise BadChange(f"{section}.{key}: {raw!r} must be a number >= 0")
    return Change(section, key, value)


def apply_change(settings: Settings, change: Change) -> Settings:
    """``settings`` with ``change`` made."""
    section = dataclasses.replace(getattr(settings, change.section), **{change.key: change.value})
    return dataclasses.replace(settings, **{change.section: section})


@dataclass(frozen=True)
class Outcome:
    """What one run of the stream raised, against the stream's labels (see the module doc)."""

    alerts: int
    revisions: int
    true_positives: int
    legit_labelled: int
    fraud_labels: int  # fraud-labelled transactions in the stream
    detected_labels: int  # of which some alert revision was triggered by
    by_type: dict[str, int]

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.alerts if self.alerts else None

    @property
    def labelled_precision(self) -> float | None:
        labelled = self.true_positives + self.legit_labelled
        return self.true_positives / labelled if labelled else None

    @property
    def recall(self) -> float | None:
        return self.detected_labels / self.fraud_labels if self.fraud_labels else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "precision": self.precision,
                "labelled_precision": self.labelled_precision, "recall": self.recall}


def stream_labels(events: list[Event]) -> dict[str, str]:
    """event id -> ``fraud`` / ``legit``, from the stream's feedback (the last label wins)."""
    labels: dict[str, str] = {}
    for event in events:
        if isinstance(event, Feedback) and event.label in ("fraud", "legit") and event.ref_event_id:
            labels[event.ref_event_id] = event.label
    return labels


def score_alerts(alerts: list[Alert], labels: dict[str, str]) -> Outcome:
    """The fraud alerts' groups and their precision against ``labels``."""
    groups: dict[str, set[str]] = {}
    types: dict[str, str] = {}
    revisions = 0
    for alert in alerts:
        if alert.type not in FRAUD_ALERT_TYPES:
            continue
        revisions += 1
        group = alert.group_key or alert.alert_id
        groups.setdefault(group, set()).add(alert.event_id)
        types.setdefault(group, alert.type)
    found = [{labels.get(e) for e in events} for events in groups.values()]
    triggered = set().union(*groups.values()) if groups else set()
    frauds = {e for e, label in labels.items() if label == "fraud"}
    by_type: dict[str, int] = {}
    for kind in types.values():
        by_type[kind] = by_type.get(kind, 0) + 1
    return Outcome(alerts=len(groups), revisions=revisions, true_positives=sum("fraud" in f for f in found),
                   legit_labelled=sum("fraud" not in f and "legit" in f for f in found),
                   fraud_labels=len(frauds), detected_labels=len(frauds & triggered),
                   by_type=dict(sorted(by_type.items())))


def raised_alerts(settings: Settings, events: list[Event], watermark: float | None) -> list[Alert]:
    """The alerts the engine raises over ``events`` with ``settings`` (one shard, the replay
    source's batches, as a replay with one worker)."""
    shard = Shard(engine_config(settings, event_clock, watermark))
    size = ReplaySource.BATCH_SIZE
    return [record for start in range(0, len(events), size)
            for record in shard.process(events[start:start + size]) if isinstance(record, Alert)]


def backtest(settings: Settings, path: Path, changes: list[Change]) -> dict[str, Any]:
    """The stream at ``path`` with the current settings and with ``changes`` made: both
    outcomes, the settings compared, the stream's size and how long each run took."""
    replay = load_replay(path, settings.input)
    labels = stream_labels(replay.events)
    changed = settings
    for change in changes:
        changed = apply_change(changed, change)
    runs = {}
    for name, run_settings in (("current", settings), ("changed", changed)):
        started = time.perf_counter()
        alerts = raised_alerts(run_settings, replay.events, replay.watermark)
        runs[name] = {**score_alerts(alerts, labels).to_dict(), "seconds": round(time.perf_counter() - started, 3),
                      "settings": {str(c.section + "." + c.key): getattr(getattr(run_settings, c.section), c.key)
                                   for c in changes}}
    return {"input": path.name, "events": len(replay.events), "dead_letters": len(replay.dead_letters),
            "labels": {"fraud": sum(v == "fraud" for v in labels.values()),
                       "legit": sum(v == "legit" for v in labels.values())},
            "changes": [str(c) for c in changes], **runs}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def report_text(result: dict[str, Any]) -> str:
    """The back-test as a small table for a terminal."""
    rows = [("", "current", "changed")]
    for name in sorted(result["current"]["settings"]):
        rows.append((name, str(result["current"]["settings"][name]), str(result["changed"]["settings"][name])))
    for field, fmt in (("alerts", str), ("revisions", str), ("true_positives", str), ("legit_labelled", str),
                       ("precision", _pct), ("labelled_precision", _pct), ("recall", _pct), ("seconds", str)):
        rows.append((field, fmt(result["current"][field]), fmt(result["changed"][field])))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    head = (f"{result['input']}: {result['events']} events, {result['labels']['fraud']} fraud and "
            f"{result['labels']['legit']} legit labels")
    return "\n".join([head, *("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)])
