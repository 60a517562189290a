"""Bytewax stateful logic for the three keyed steps; each delegates to ``detectors``.

Snapshots. Bytewax asks every key touched in an epoch for a snapshot at the end of the
epoch, with or without recovery. Without recovery nothing ever reads one, so none is made.
With recovery the state is pickled (cheaper than ``copy.deepcopy``, and immutable by
construction): one small object per touched customer, and the shared step's models.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bytewax.operators import StatefulBatchLogic

from detectors.churn import ChurnModel, fit_priors
from detectors.customer import FRAUD_LABELS, CustomerModel, CustomerView, Summary, ViewParams
from detectors.fraud import FraudDetector, FraudParams
from detectors.lifecycle import AlertLifecycle
from detectors.nba import Action, NBAParams, NextBestActions
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from engine.isolation import Failures
from flows.items import AsOf, Failed, Observed, Scored, Sequenced
from schemas.events import Control, Event, Feedback, Transaction
from schemas.outputs import (
    Alert,
    CustomerState,
    DeadLetter,
    LifecycleChange,
    Prompt,
    Reason,
    Score,
    Severity,
    alert_id_for,
    format_ts,
)

Clock = Callable[[float], str]  # event time -> the "emitted_at" to stamp
Output = Alert | Prompt | Score | CustomerState | DeadLetter

_RETAIN = StatefulBatchLogic.RETAIN
log = logging.getLogger(__name__)
CHURN_MODEL_VERSION = "churn-bgnbd-prior-2"


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
    failures: Failures = field(default_factory=Failures)  # per-event exceptions -> dead letters


class CustomerStep(StatefulBatchLogic[Sequenced, Observed | AsOf | Failed, bytes | None]):
    """Per customer: profile features, rule hits and churn evidence
    (``detectors.customer.CustomerModel``). An event whose processing raises becomes a
    ``Failed`` item (``engine.isolation``) and the customer's next events go on."""

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.customer_id: str | None = None
        self.model = CustomerModel(config.profile, config.rules, config.view.churn)
        if isinstance(restored, tuple):
            self.customer_id, self.model = restored
            self.model.churn_params = config.view.churn
        self._snapshots = config.snapshots
        self._watermark = config.watermark
        self._failures = config.failures

    def on_batch(self, values: list[Sequenced]) -> tuple[Iterable[Observed | Failed], bool]:
        observe = self.model.observe
        self.customer_id = values[-1].event.customer_id
        out: list[Observed | Failed] = []
        for v in values:
            try:
                out.append(Observed(v.part, v.seq, v.event, observe(v.event), v.source_time, v.read_at))
            except Exception as exc:
                out.append(Failed(v.part, v.seq, v.event.customer_id, self._failures.record(
                    "customer_profile", v.event, exc, {"part": v.part, "seq": v.seq})))
        return out, _RETAIN

    def on_eof(self) -> tuple[Iterable[AsOf], bool]:
        """At the end of a replay: the churn evidence as of the stream's last event time."""
        if self._watermark is None or self.customer_id is None:
            return (), _RETAIN
        try:
            return [AsOf(self.customer_id, *self.model.churn_evidence(self._watermark))], _RETAIN
        except Exception:  # no event to dead-letter: the customer's final state is left out
            log.exception("customer %s: churn evidence at the end of the replay failed; no final state",
                          self.customer_id, extra={"step": "customer_profile"})
            return (), _RETAIN

    def snapshot(self) -> bytes | None:
        return _freeze((self.customer_id, self.model), self._snapshots)


class SharedScoringStep(StatefulBatchLogic[Observed | AsOf | Failed, Scored | AsOf | Failed, bytes | None]):
    """Across customers: counterparty risk, anomaly and supervised models, the churn model
    learned from churn labels, and the next-best-action policy (one key).

    Items reach this step from every worker of the per-customer step, interleaved in no
    fixed order; they are put back into source order by their per-partition ``seq`` before
    any model sees them, so results do not depend on the number of workers. The end-of-replay
    ``AsOf`` items are scored at EOF, after every event, in customer order. ``Failed`` items
    (events whose processing raised upstream, or here) keep their place in the order and pass
    on to the dead-letter outputs.
    """

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.detector = FraudDetector(config.fraud)
        self.next_seq: dict[str, int] = {}  # per source partition: the next seq to process
        self.waiting: dict[str, dict[int, Observed | Failed]] = {}  # arrived ahead of their turn
        self.now = float("-inf")  # the latest event time processed (the watermark)
        self.nba = NextBestActions(config.actions, config.nba) if config.nba.enabled else None
        self.churn = ChurnModel()
        if isinstance(restored, tuple):
            self.detector, self.next_seq, self.waiting, self.now, self.nba, self.churn = restored
        self.final: list[AsOf] = []  # end of replay: scored at EOF
        self._config = config

    def _in_order(self, values: list[Observed | AsOf | Failed]) -> list[Observed | Failed]:
        ready: list[Observed | Failed] = []
        for item in values:
            if isinstance(item, AsOf):
                self.final.append(item)
                continue
            expected = self.next_seq.get(item.part, 0)
            if item.seq == expected and not self.waiting.get(item.part):
                ready.append(item)
                self.next_seq[item.part] = expected + 1
            else:
                self.waiting.setdefault(item.part, {})[item.seq] = item
                ready.extend(self._release(item.part))
        return ready

    def _release(self, part: str) -> list[Observed | Failed]:
        waiting, seq, released = self.waiting[part], self.next_seq.get(part, 0), []
        while seq in waiting:
            released.append(waiting.pop(seq))
            seq += 1
        self.next_seq[part] = seq
        if not waiting:
            del self.waiting[part]
        return released

    def on_batch(self, values: list[Observed | AsOf | Failed]) -> tuple[Iterable[Scored | Failed], bool]:
        ordered = self._in_order(values)
        anomaly = self._anomaly(ordered)
        out: list[Scored | Failed] = []
        for item, score in zip(ordered, anomaly, strict=True):
            if isinstance(item, Failed):
                out.append(item)
                continue
            try:
                out.append(self._process(item, score))
            except Exception as exc:
                event = item.event
                out.append(Failed(item.part, item.seq, event.customer_id, self._config.failures.record(
                    "shared_scoring", event, exc, {"part": item.part, "seq": item.seq})))
        return out, _RETAIN

    def _anomaly(self, ordered: list[Observed | Failed]) -> list[float | None]:
        """The anomaly score of each transaction in ``ordered`` (None for the other items):
        the forest scores (and then learns) the batch's transactions at once. Should that
        raise, each row is scored alone, so that only the row at fault goes without a score."""
        scores: list[float | None] = [None] * len(ordered)
        rows = [i for i, item in enumerate(ordered)
                if type(item) is Observed and item.observation.features is not None]
        features = [ordered[i].observation.features for i in rows]  # type: ignore[union-attr]
        try:
            for i, score in zip(rows, self.detector.anomaly_scores(features), strict=True):  # type: ignore[arg-type]
                scores[i] = score
        except Exception:
            log.exception("anomaly scores of a batch failed; scoring its rows one by one",
                          extra={"step": "shared_scoring"})
            for i, row in zip(rows, features, strict=True):
                try:
                    scores[i] = self.detector.anomaly_scores([row])[0]  # type: ignore[list-item]
                except Exception:
                    scores[i] = None  # _process refuses the transaction
        return scores

    def _process(self, item: Observed, anomaly: float | None) -> Scored:
        event, observation, detector = item.event, item.observation, self.detector
        if event.t > self.now:
            self.now = event.t
            detector.advance(event.t)
        churn = nba_churn = None
        if observation.churn is not None:
            view = self._config.view
            churn = self.churn.score(observation.churn, view.churn)
            if observation.churn_label is not None:  # score before learn
                self.churn.learn(*observation.churn_label, view.churn)
            if observation.churn.active_days >= view.churn_min_active_days:
                nba_churn = churn  # a newcomer's score says nothing yet about leaving
        if isinstance(event, Transaction):
            if observation.features is None or observation.hits is None or anomaly is None:
                raise ValueError("a transaction without features, rule hits or an anomaly score")
            assessment = detector.assess(event.event_id, event.t, event.counterparty_id,
                                         observation.features, observation.hits, anomaly)
            alert = None
            if assessment.alert_type is not None:
                alert = Alert(
                    alert_id=alert_id_for(event.event_id, assessment.alert_type),
                    type=assessment.alert_type, severity=assessment.severity,
                    score=assessment.fraud_score, customer_id=event.customer_id,
                    rm_id=observation.summary.rm_id, event_id=event.event_id,
                    event_ts=event.ts, emitted_at=self._config.clock(event.t),
                    reasons=assessment.reasons, model_version=assessment.model_version)
            prompt = self._prompt(event, observation.summary, alert is not None, nba_churn)
            return Scored(event, observation, assessment, alert, item.source_time, read_at=item.read_at,
                          prompt=prompt, churn=churn)
        outcome = None
        if isinstance(event, Feedback) and event.ref_event_id and event.label in FRAUD_LABELS:
            is_fraud = event.label == "fraud"
            scored = detector.observe_label(event.ref_event_id, event.t, is_fraud)
            outcome = (scored, is_fraud) if scored is not None else None
        prompt = self._prompt(event, observation.summary, False, nba_churn)
        return Scored(event, observation, None, None, item.source_time, outcome, item.read_at, prompt, churn)

    def _prompt(self, event: Event, summary: Summary, alerted: bool, churn: float | None) -> Prompt | None:
        """The next-best-action prompt ``event`` triggers, if any (most events cannot matter
        and are let go at once: ``NextBestActions.matters``)."""
        return self.nba.on_event(event, summary, alerted, churn_score=churn) if self.nba is not None else None

    def on_eof(self) -> tuple[Iterable[AsOf], bool]:
        """Score every customer's end-of-replay churn evidence with the final model; with
        ``fit_priors``, under BG/NBD priors fitted to the whole replayed history (logged, so
        that a deployment can take them into its configuration)."""
        final, self.final = sorted(self.final, key=lambda item: item.customer_id), []
        params = self._config.view.churn
        rhythms = [item.rhythm for item in final if item.rhythm is not None]
        if params.fit_priors and len(rhythms) >= params.fit_min_customers:
            try:
                fitted = fit_priors(rhythms, params)
            except Exception:
                log.exception("fitting the churn priors failed; the configured ones score the final states",
                              extra={"step": "shared_scoring"})
            else:
                params = fitted
                log.info("churn priors fitted to %d customers: r=%.4f alpha_days=%.3f a=%.4f b=%.4f",
                         len(rhythms), params.r, params.alpha_days, params.a, params.b)
                for item in final:
                    if item.rhythm is not None:
                        item.evidence = item.rhythm.requiet(item.evidence, params)
        scored: list[AsOf] = []
        for item in final:
            try:
                item.churn = self.churn.score(item.evidence, params)
            except Exception:
                log.exception("customer %s: the final churn score failed; no final state", item.customer_id,
                              extra={"step": "shared_scoring"})
                continue
            scored.append(item)
        return scored, _RETAIN

    def snapshot(self) -> bytes | None:
        return _freeze((self.detector, self.next_seq, self.waiting, self.now, self.nba, self.churn),
                       self._config.snapshots)


class CustomerViewStep(StatefulBatchLogic[Scored | AsOf | Failed, Output | LifecycleChange, bytes | None]):
    """Per customer again: fraud risk, open alerts, the alert lifecycle (dedup, grouping,
    escalation, snoozes: ``detectors.lifecycle``), churn alerts and the customer-state output.
    The dead letters of failed events pass through; an event whose processing raises here
    becomes one too."""

    def __init__(self, config: StepConfig, resume: bytes | None) -> None:
        restored = _thaw(resume)
        self.view = CustomerView()
        self.lifecycle = AlertLifecycle()
        if isinstance(restored, tuple):
            self.view, self.lifecycle = restored
        self._config = config

    def on_batch(self, values: list[Scored | AsOf | Failed]) -> tuple[Iterable[Output | LifecycleChange], bool]:
        out: list[Output | LifecycleChange] = []
        for item in values:
            if isinstance(item, Failed):
                out.append(item.dead_letter)
                continue
            records: list[Output | LifecycleChange] = []
            try:
                self._view(item, records)
                out.extend(records)
            except Exception as exc:
                if isinstance(item, AsOf):
                    log.exception("customer %s: the final state failed", item.customer_id,
                                  extra={"step": "customer_view"})
                    continue
                out.append(self._config.failures.record("customer_view", item.event, exc, {}))
        return out, _RETAIN

    def _view(self, item: Scored | AsOf, out: list[Output | LifecycleChange]) -> None:
        """The records ``item`` gives, appended to ``out``."""
        params, view, lifecycle = self._config.view, self.view, self.lifecycle
        if isinstance(item, AsOf):
            if view.summary is not None and item.churn is not None:
                out.append(self.state(item.customer_id, item.evidence.t, item.churn))
            return
        event, assessment = item.event, item.assessment
        if isinstance(event, Control):
            if event.until_t is not None or event.action == "unsnooze":
                until = event.until_t if event.action == "snooze" and event.until_t is not None else event.t
                out.append(lifecycle.snooze(event.customer_id, event.alert_type, until, event.t,
                                            event.event_id, event.ts))
            return
        label = event.label if isinstance(event, Feedback) else None
        score = assessment.fraud_score if assessment is not None else None
        view.observe(item.observation.summary, event.t, score, item.alert is not None, label, params)
        alerts = [item.alert] if item.alert is not None else []
        evidence = item.observation.churn
        if item.churn is not None and evidence is not None:
            churn = view.churn_alert_due(item.churn, evidence, params)
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

    def _churn_alert(self, event: Event, rm_id: str | None, score: float,
                     reasons: list[Reason]) -> Alert:
        """A ``churn_risk`` alert to the customer's RM, as of this event of theirs."""
        severity: Severity = "high" if score >= 0.95 else "medium"
        return Alert(alert_id=alert_id_for(event.event_id, "churn_risk"), type="churn_risk",
                     severity=severity, score=round(score, 6), customer_id=event.customer_id,
                     rm_id=rm_id, event_id=event.event_id, event_ts=event.ts,
                     emitted_at=self._config.clock(event.t), reasons=tuple(reasons),
                     model_version=CHURN_MODEL_VERSION)

    def state(self, customer_id: str, now: float, churn_score: float) -> CustomerState:
        """The customer view as of event time ``now``, with the churn score as of then."""
        view, params = self.view, self._config.view
        summary = view.summary
        # A customer known only from reference data (a profile) has no activity: their last
        # event is that profile.
        last_t = summary.last_t if summary is not None and summary.last_t is not None else view.last_seen_t
        if summary is None or last_t is None:
            raise ValueError(f"customer {customer_id} has no event to take a state from")
        return CustomerState(
            customer_id=customer_id,
            churn_score=round(churn_score, 6),
            fraud_risk=round(view.fraud_risk(now, params), 6),
            last_event_ts=format_ts(last_t), as_of=format_ts(now),
            rm_id=summary.rm_id, segment=summary.segment, risk_level=summary.risk_level,
            n_txns=summary.n_txns, n_app_events=summary.n_app, open_alerts=view.open_alerts)

    def snapshot(self) -> bytes | None:
        return _freeze((self.view, self.lifecycle), self._config.snapshots)
