"""Bytewax stateful logic for the three keyed steps; each delegates to ``detectors``.

Snapshots. Bytewax asks every key touched in an epoch for a snapshot at the end of the
epoch, with or without recovery. Without recovery nothing ever reads one, so none is made.
With recovery the state is pickled (cheaper than ``copy.deepcopy``, and immutable by
construction): one small object per touched customer, and the shared step's models.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from bytewax.operators import StatefulBatchLogic

from detectors.customer import FRAUD_LABELS, CustomerModel, CustomerView, ViewParams
from detectors.fraud import FraudDetector, FraudParams
from detectors.lifecycle import AlertLifecycle
from detectors.nba import Action, NBAParams, NextBestActions
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from flows.items import Observed, Scored, Sequenced
from schemas.events import Control, Event, Feedback, Transaction
from schemas.outputs import (
    Alert,
    CustomerState,
    LifecycleChange,
    Prompt,
    Reason,
    Score,
    Severity,
    alert_id_for,
    format_ts,
)

Clock = Callable[[float], str]  # event time -> the "emitted_at" to stamp
Output = Alert | Prompt | Score | CustomerState

_RETAIN = StatefulBatchLogic.RETAIN
CHURN_MODEL_VERSION = "churn-bgnbd-prior-1"


def _freeze(state: object, enabled: bool) -> bytes | None:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL) if enabled else None


def _thaw(snapshot: bytes | None) -> object | None:
    return pickle.loads(snapshot) if snapshot is not None else None


@dataclass(frozen=True)
class StepConfig:
    """What the steps need from the settings, plus how the run is clocked."""

    profile: ProfileParams
    rules: RuleParams
    fraud: FraudParams
    view: ViewParams
    clock: Clock
    snapshots: bool  # recovery is on
    watermark: float | None = None  # replay: the last event time; customer state is as of it
    emit_scores: bool = False
    nba: NBAParams = field(default_factory=lambda: NBAParams(enabled=False))
    actions: tuple[Action, ...] = ()  # the next-best-action catalogue


class CustomerStep(StatefulBatchLogic[Sequenced, Observed, bytes | None]):
    """Per customer: profile features and rule hits (``detectors.customer.CustomerModel``)."""

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.model = restored if isinstance(restored, CustomerModel) else CustomerModel(
            config.profile, config.rules)
        self._snapshots = config.snapshots

    def on_batch(self, values: list[Sequenced]) -> tuple[Iterable[Observed], bool]:
        observe = self.model.observe
        return [Observed(v.part, v.seq, v.event, observe(v.event), v.source_time, v.read_at)
                for v in values], _RETAIN

    def snapshot(self) -> bytes | None:
        return _freeze(self.model, self._snapshots)


class SharedScoringStep(StatefulBatchLogic[Observed, Scored, bytes | None]):
    """Across customers: counterparty risk, anomaly and supervised models, and the
    next-best-action policy (one key).

    Items reach this step from every worker of the per-customer step, interleaved in no
    fixed order; they are put back into source order by their per-partition ``seq`` before
    any model sees them, so results do not depend on the number of workers.
    """

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.detector = FraudDetector(config.fraud)
        self.next_seq: dict[str, int] = {}  # per source partition: the next seq to process
        self.waiting: dict[str, dict[int, Observed]] = {}  # arrived ahead of their turn
        self.now = float("-inf")  # the latest event time processed (the watermark)
        self.nba = NextBestActions(config.actions, config.nba) if config.nba.enabled else None
        if isinstance(restored, tuple):
            self.detector, self.next_seq, self.waiting, self.now, self.nba = restored
        self._config = config

    def _in_order(self, values: list[Observed]) -> list[Observed]:
        ready: list[Observed] = []
        for item in values:
            expected = self.next_seq.get(item.part, 0)
            if item.seq == expected and not self.waiting.get(item.part):
                ready.append(item)
                self.next_seq[item.part] = expected + 1
            else:
                self.waiting.setdefault(item.part, {})[item.seq] = item
                ready.extend(self._release(item.part))
        return ready

    def _release(self, part: str) -> list[Observed]:
        waiting, seq, released = self.waiting[part], self.next_seq.get(part, 0), []
        while seq in waiting:
            released.append(waiting.pop(seq))
            seq += 1
        self.next_seq[part] = seq
        if not waiting:
            del self.waiting[part]
        return released

    def on_batch(self, values: list[Observed]) -> tuple[Iterable[Scored], bool]:
        ordered = self._in_order(values)
        # The anomaly forest scores (and then learns) the batch's transactions at once.
        anomaly = iter(self.detector.anomaly_scores(
            [item.observation.features for item in ordered if item.observation.features is not None]))
        return [self._process(item, anomaly) for item in ordered], _RETAIN

    def _process(self, item: Observed, anomaly: Iterator[float]) -> Scored:
        event, observation, detector = item.event, item.observation, self.detector
        if event.t > self.now:
            self.now = event.t
            detector.advance(event.t)
        if isinstance(event, Transaction):
            assert observation.features is not None and observation.hits is not None
            assessment = detector.assess(event.event_id, event.t, event.counterparty_id,
                                         observation.features, observation.hits, next(anomaly))
            alert = None
            if assessment.alert_type is not None:
                alert = Alert(
                    alert_id=alert_id_for(event.event_id, assessment.alert_type),
                    type=assessment.alert_type, severity=assessment.severity,
                    score=assessment.fraud_score, customer_id=event.customer_id,
                    rm_id=observation.summary.rm_id, event_id=event.event_id,
                    event_ts=event.ts, emitted_at=self._config.clock(event.t),
                    reasons=assessment.reasons, model_version=assessment.model_version)
            prompt = self.nba.on_event(event, observation.summary, alert is not None) if self.nba else None
            return Scored(event, observation, assessment, alert, item.source_time, read_at=item.read_at,
                          prompt=prompt)
        outcome = None
        if isinstance(event, Feedback) and event.ref_event_id and event.label in FRAUD_LABELS:
            is_fraud = event.label == "fraud"
            scored = detector.observe_label(event.ref_event_id, event.t, is_fraud)
            outcome = (scored, is_fraud) if scored is not None else None
        prompt = None
        if self.nba is not None and not isinstance(event, Control):
            prompt = self.nba.on_event(event, observation.summary, False)
        return Scored(event, observation, None, None, item.source_time, outcome, item.read_at, prompt)

    def snapshot(self) -> bytes | None:
        return _freeze((self.detector, self.next_seq, self.waiting, self.now, self.nba), self._config.snapshots)


class CustomerViewStep(StatefulBatchLogic[Scored, Output | LifecycleChange, bytes | None]):
    """Per customer again: fraud risk, open alerts, the alert lifecycle (dedup, grouping,
    escalation, snoozes: ``detectors.lifecycle``) and the customer-state output."""

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.customer_id: str | None = None
        self.view = CustomerView()
        self.lifecycle = AlertLifecycle()
        if isinstance(restored, tuple):
            self.customer_id, self.view, *rest = restored
            if rest:
                self.lifecycle = rest[0]
        self._config = config

    def on_batch(self, values: list[Scored]) -> tuple[Iterable[Output | LifecycleChange], bool]:
        out: list[Output | LifecycleChange] = []
        params, view, lifecycle = self._config.view, self.view, self.lifecycle
        for item in values:
            event, assessment = item.event, item.assessment
            self.customer_id = event.customer_id
            if isinstance(event, Control):
                if event.until_t is not None or event.action == "unsnooze":
                    until = event.until_t if event.action == "snooze" and event.until_t is not None else event.t
                    out.append(lifecycle.snooze(event.customer_id, event.alert_type, until, event.t,
                                                event.event_id, event.ts))
                continue
            label = event.label if isinstance(event, Feedback) else None
            score = assessment.fraud_score if assessment is not None else None
            view.observe(item.observation.summary, event.t, score, item.alert is not None, label, params)
            alerts = [item.alert] if item.alert is not None else []
            churn = view.churn_alert_due(event.t, params) if view.observe_churn(event, params) else None
            if churn is not None:
                alerts.append(self._churn_alert(event, item.observation.summary.rm_id, *churn))
            for alert in alerts:
                if params.lifecycle.enabled:
                    emitted, changes = lifecycle.on_alert(alert, event.t, params.lifecycle)
                    if emitted is not None:
                        out.append(emitted)
                    out.extend(changes)
                else:
                    out.append(alert)
            if item.prompt is not None:
                out.append(item.prompt)
            if assessment is not None and self._config.emit_scores:
                out.append(Score(event.event_id, event.customer_id, event.ts, assessment.fraud_score, {
                    "model_score": assessment.model_score, "prior_score": assessment.prior_score,
                    "anomaly_score": assessment.anomaly_score}))
        return out, _RETAIN

    def _churn_alert(self, event: Event, rm_id: str | None, score: float,
                     reasons: list[Reason]) -> Alert:
        """A ``churn_risk`` alert to the customer's RM, as of this event of theirs."""
        severity: Severity = "high" if score >= 0.95 else "medium"
        return Alert(alert_id=alert_id_for(event.event_id, "churn_risk"), type="churn_risk",
                     severity=severity, score=round(score, 6), customer_id=event.customer_id,
                     rm_id=rm_id, event_id=event.event_id, event_ts=event.ts,
                     emitted_at=self._config.clock(event.t), reasons=tuple(reasons),
                     model_version=CHURN_MODEL_VERSION)

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        now = self._config.watermark
        if now is None or self.customer_id is None or self.view.summary is None:
            return (), _RETAIN
        return [self.state(self.customer_id, now)], _RETAIN

    def state(self, customer_id: str, now: float) -> CustomerState:
        """The customer view as of event time ``now``."""
        view, params = self.view, self._config.view
        summary = view.summary
        assert summary is not None and summary.last_t is not None
        return CustomerState(
            customer_id=customer_id,
            churn_score=round(view.churn_score(now, params), 6),
            fraud_risk=round(view.fraud_risk(now, params), 6),
            last_event_ts=format_ts(summary.last_t), as_of=format_ts(now),
            rm_id=summary.rm_id, segment=summary.segment, risk_level=summary.risk_level,
            n_txns=summary.n_txns, n_app_events=summary.n_app, open_alerts=view.open_alerts)

    def snapshot(self) -> bytes | None:
        return _freeze((self.customer_id, self.view, self.lifecycle), self._config.snapshots)
