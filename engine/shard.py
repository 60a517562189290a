"""The engine's per-event logic for the customers of one shard, framework-free.

A ``Shard`` holds, for each of its customers, the behavioural profile, rules and churn
evidence (``detectors.customer.CustomerModel``), the customer view and the alert lifecycle,
and, shared by its customers, the fraud models (counterparty risk, rate tables, anomaly
forest, supervised model: ``detectors.fraud.FraudDetector``), the churn model learned from
churn labels and the next-best-action policy with each customer's contact state.

``process(batch)`` takes valid events in source order and returns the records they give:
alerts (after de-duplication and grouping), prompts, per-event scores (replay), lifecycle
changes for the audit trail, and the dead letters of events whose processing raised. A batch
goes through three stages, as a dataflow of three steps would: each event through its
customer's model; the batch's transactions through the anomaly forest at once (numpy); then
event by event, the shared models (score before learn) and the customer's view. An exception
in a stage is that event's problem (``engine.isolation``): it becomes a dead letter naming the
stage, and the next event goes on. ``finish(watermark)`` ends a replay: every customer's
state as of the stream's last event time.

The dataflow (``flows/``), the bare loop (``bench.bare_loop``) and the closed-loop evaluation
(``bench.nba_loop``) all call this class: there is one per-event logic.

>>> from engine.config import EngineConfig
>>> from detectors.customer import ViewParams
>>> from detectors.fraud import FraudParams
>>> from detectors.profile import ProfileParams
>>> from detectors.rules import RuleParams
>>> from schemas.events import parse_event
>>> config = EngineConfig(ProfileParams(), RuleParams(), FraudParams(), ViewParams(), clock=str, emit_scores=True)
>>> shard = Shard(config)
>>> txn = parse_event(b'{"kind":"transaction","event_id":"e1","customer_id":"c1",'
...                   b'"ts":"2026-01-05T10:00:00Z","amount":120.0,"counterparty_id":"m1"}')
>>> [type(record).__name__ for record in shard.process([txn])]
['Score']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from time import perf_counter
from typing import Protocol

import numpy as np

from detectors.churn import ChurnModel, fit_priors
from detectors.customer import FRAUD_LABELS, CustomerModel, CustomerView, Observation
from detectors.fraud import Assessment, FraudDetector, profile_matrix
from detectors.fraud import Transaction as FraudTransaction
from detectors.lifecycle import AlertLifecycle
from detectors.nba import NextBestActions
from detectors.voice import VoiceScorer
from engine.config import EngineConfig
from engine.records import (
    churn_alert,
    complaint_alert,
    customer_state,
    fairness_alerts,
    fraud_alert,
    localized,
    model_change,
    model_report,
    score_record,
)
from schemas.events import Control, Event, Feedback, Transaction
from schemas.outputs import (
    Alert,
    CustomerState,
    DeadLetter,
    LifecycleChange,
    ModelChange,
    ModelReport,
    Prompt,
    Score,
)
from schemas.texts import EN

log = logging.getLogger(__name__)

Record = Alert | Prompt | Score | CustomerState | LifecycleChange | ModelReport | ModelChange | DeadLetter
#: The stages of an event's processing, as failures and timings name them.
STAGES = ("customer_profile", "shared_scoring", "customer_view")


class Observer(Protocol):
    """What the engine tells an observer (``ops.metrics.EngineMetrics``) about each batch."""

    def scored_batch(self, scored: list[tuple[float, bool, float, float | None, float | None]],
                     feedback: list[tuple[str, float | None, bool]]) -> None:
        """Each scored transaction ``(fraud_score, alerted, event time, source time, read
        time)`` and each feedback event ``(label, the score its transaction had or None,
        whether the label says fraud)``."""

    def stage_times(self, seconds: tuple[float, float, float], items: int) -> None:
        """The time the batch spent in each of ``STAGES``, and its number of events."""

    def customers_added(self, n: int) -> None:
        """``n`` customers were seen for the first time."""

    def fairness_counted(self, counts: dict[tuple[str, str, str], int],
                         ratios: list[tuple[str, str, str, float, bool]] | None) -> None:
        """Next-best action's fairness figures (``detectors.fairness``): the counts added
        during the batch per ``(dimension, group, outcome)``; if a window was judged, the
        latest judgement, ``(dimension, group, metric, ratio to the best-served, breached)``
        for every group judged."""

    def snapshot_taken(self, seconds: float, size_bytes: int) -> None:
        """The shard's state was serialised for a recovery snapshot (by the runtime's adapter,
        ``flows.steps.EngineStep``): how long that took, and its size."""


class Customer:
    """Everything the engine keeps about one customer."""

    __slots__ = ("lifecycle", "model", "view")

    def __init__(self, model: CustomerModel) -> None:
        self.model = model
        self.view = CustomerView()
        self.lifecycle = AlertLifecycle()


class Shard:
    """The customers of one shard and the models they share (see the module doc)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.customers: dict[str, Customer] = {}
        self.detector = FraudDetector(config.fraud)
        self.churn = ChurnModel()
        self.nba = NextBestActions(config.actions, config.nba) if config.nba.enabled else None
        self.voice = VoiceScorer(config.view.voice) if config.view.voice.enabled else None

    # -- state -----------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, object]:
        return {"customers": self.customers, "detector": self.detector, "churn": self.churn, "nba": self.nba}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.voice = None  # configure() sets the scorer: its models are not state

    def configure(self, config: EngineConfig) -> None:
        """After a restore: the run's configuration, which the snapshot's may differ from (a
        rule threshold changed after a back-test, say). Settings apply to every restored
        customer and model; what was learned stays. Next-best action turned off drops its
        learned state; turned on after a run without it, it starts afresh."""
        self.config = config
        self.detector.reconfigure(config.fraud)
        self.voice = VoiceScorer(config.view.voice) if config.view.voice.enabled else None
        if not config.nba.enabled:
            self.nba = None
        elif self.nba is None:
            self.nba = NextBestActions(config.actions, config.nba)
        else:
            self.nba.reconfigure(config.actions, config.nba)
        for customer in self.customers.values():
            model = customer.model
            model.rules, model.profile.params = config.rules, config.profile
            model.churn_params, model.scorer = config.view.churn, self.voice

    def customer(self, customer_id: str) -> Customer:
        customer = self.customers.get(customer_id)
        if customer is None:
            c = self.config
            customer = self.customers[customer_id] = Customer(CustomerModel(c.profile, c.rules, c.view.churn,
                                                                            self.voice))
        return customer

    # -- events ----------------------------------------------------------------------------

    def process(self, events: Sequence[Event], source_times: Sequence[float | None] | None = None,
                read_times: Sequence[float | None] | None = None,
                observer: Observer | None = None) -> list[Record]:
        """The records ``events`` (valid, in source order) give; ``source_times`` and
        ``read_times`` (live: when each event entered the pipeline and when the engine read
        it) only feed the ``observer``."""
        if observer is not None:
            return self._observed(events, source_times, read_times, observer)
        out: list[Record] = []
        observed = self._profile(events, out)
        anomaly = self._anomaly(observed)
        for segment in self._segments(observed):
            verdicts = self._assess(segment, observed, anomaly)
            for i in segment:
                entry = observed[i]
                assert entry is not None
                self._event(*entry, verdicts.get(i), out)
        self._models(out)
        self._fairness(out, None)
        return out

    def _fairness(self, out: list[Record], observer: Observer | None) -> None:
        """The ``fairness_drift`` alerts of the fairness windows judged during the batch, and
        the fairness counts to the ``observer``."""
        tracker = self.nba.policy.fairness if self.nba is not None else None
        if tracker is None or not (tracker.checks or (observer is not None and tracker.unreported)):
            return
        checks, counts = tracker.drain()
        config = self.config
        for check in checks:
            if check.breaches:
                out.extend(fairness_alerts(check, tracker.params.threshold, config.clock(check.closed_by[2]),
                                           config.locale))
        if observer is not None:
            ratios = [(d.dimension, d.value, d.metric, d.ratio, d.breached) for d in checks[-1].disparities
                      ] if checks else None
            observer.fairness_counted(counts, ratios)

    def _models(self, out: list[Record]) -> None:
        """The fraud models' evaluations and champion changes made during the batch."""
        evaluated, changes = self.detector.drain()
        if changes:
            versions = self.detector.versions()
            out.extend(model_change(change, versions) for change in changes)
        out.extend(model_report(*each) for each in evaluated)

    def _segments(self, observed: list[tuple[Event, Customer, Observation] | None]) -> Iterator[list[int]]:
        """The indices of the processed events, cut where the shared models' clock crosses
        the time of their next change (``FraudDetector.advance`` learns there: a tick's end,
        or a slice of the last tick's learning): the events of a segment are scored by the
        same models."""
        detector = self.detector
        segment: list[int] = []
        end = detector.next_change
        for i, entry in enumerate(observed):
            if entry is None:
                continue
            t = entry[0].t
            if end is None or t >= end:
                if segment:
                    yield segment
                    segment = []
                detector.advance(t)
                end = detector.next_change
            segment.append(i)
        if segment:
            yield segment

    def _assess(self, segment: list[int], observed: list[tuple[Event, Customer, Observation] | None],
                stage2: tuple[list[float | None], np.ndarray, list[int]]) -> dict[int, Assessment | Exception]:
        """The assessment of each transaction of a segment, at once (or the error refusing
        it). Should the batch raise, each one is assessed alone, so that only the one at fault
        fails."""
        anomaly, profile, where = stage2
        rows: list[int] = []
        txns: list[FraudTransaction] = []
        verdicts: dict[int, Assessment | Exception] = {}
        for i in segment:
            event, _, observation = observed[i]  # type: ignore[misc]
            if isinstance(event, Transaction):
                if observation.features is None or observation.hits is None or anomaly[i] is None:
                    verdicts[i] = ValueError("a transaction without features, rule hits or an anomaly score")
                    continue
                rows.append(i)
                txns.append(FraudTransaction(event.event_id, event.t, event.counterparty_id, observation.hits,
                                             anomaly[i], event.merchant_category, event.channel))  # type: ignore[arg-type]
        if not txns:
            return verdicts
        features = profile[[where[i] for i in rows]]
        try:
            verdicts.update(zip(rows, self.detector.assess_batch(txns, features), strict=True))
        except Exception:
            log.exception("assessing a batch of transactions failed; assessing them one by one",
                          extra={"step": "shared_scoring"})
            for row, (i, txn) in enumerate(zip(rows, txns, strict=True)):
                try:
                    verdicts[i] = self.detector.assess_batch([txn], features[row:row + 1])[0]
                except Exception as exc:
                    verdicts[i] = exc
        return verdicts

    def _profile(self, events: Sequence[Event], out: list[Record]) -> list[tuple[Event, Customer, Observation] | None]:
        """Stage 1: each event through its customer's model."""
        failures = self.config.failures
        observed: list[tuple[Event, Customer, Observation] | None] = []
        for event in events:
            customer = self.customer(event.customer_id)
            try:
                observed.append((event, customer, customer.model.observe(event)))
            except Exception as exc:
                observed.append(None)
                out.append(failures.record("customer_profile", event, exc, {}))
        return observed

    def _event(self, event: Event, customer: Customer, observation: Observation,
               verdict: Assessment | Exception | None, out: list[Record], times: list[float] | None = None
               ) -> tuple[Assessment | None, Alert | None, tuple[float, bool] | None] | None:
        """Stage 3 for one event: the shared models, then the customer's view; what the
        shared models said (None if the event failed there). With ``times``, the seconds
        each took are added to ``times[0]`` and ``times[1]``."""
        failures = self.config.failures
        started = perf_counter() if times is not None else 0.0
        try:
            assessment, alert, prompt, churn, outcome = self._share(event, observation, verdict)
        except Exception as exc:
            out.append(failures.record("shared_scoring", event, exc, {}))
            return None
        if times is not None:
            shared = perf_counter()
            times[0] += shared - started
        records: list[Record] = []
        try:
            self._view(event, customer, observation, assessment, alert, prompt, churn, records)
            out.extend(records)
        except Exception as exc:
            out.append(failures.record("customer_view", event, exc, {}))
        if times is not None:
            times[1] += perf_counter() - shared
        return assessment, alert, outcome

    def _observed(self, events: Sequence[Event], source_times: Sequence[float | None] | None,
                  read_times: Sequence[float | None] | None, observer: Observer) -> list[Record]:
        """``process`` with the stages timed and every score and label reported."""
        out: list[Record] = []
        known = len(self.customers)
        started = perf_counter()
        observed = self._profile(events, out)
        profiled = perf_counter()
        anomaly = self._anomaly(observed)
        times = [perf_counter() - profiled, 0.0]  # shared scoring (the anomaly batch first), view
        scored: list[tuple[float, bool, float, float | None, float | None]] = []
        feedback: list[tuple[str, float | None, bool]] = []
        for segment in self._segments(observed):
            assessing = perf_counter()
            verdicts = self._assess(segment, observed, anomaly)
            times[0] += perf_counter() - assessing
            for i in segment:
                entry = observed[i]
                assert entry is not None
                verdict = self._event(*entry, verdicts.get(i), out, times)
                if verdict is None:
                    continue
                event, (assessment, alert, outcome) = entry[0], verdict
                if assessment is not None:
                    scored.append((assessment.fraud_score, alert is not None, event.t,
                                   source_times[i] if source_times else None,
                                   read_times[i] if read_times else None))
                elif isinstance(event, Feedback):
                    feedback.append((event.label, *outcome) if outcome is not None else (event.label, None, False))
        self._models(out)
        self._fairness(out, observer)
        observer.stage_times((profiled - started, times[0], times[1]), len(events))
        if len(self.customers) > known:
            observer.customers_added(len(self.customers) - known)
        if scored or feedback:
            observer.scored_batch(scored, feedback)
        return out

    def _anomaly(self, observed: list[tuple[Event, Customer, Observation] | None]
                 ) -> tuple[list[float | None], np.ndarray, list[int]]:
        """Stage 2: the batch's transactions' profile features as one array (and for each
        event its row, -1 for the other events), and each one's anomaly score (None for the
        other events). Should the batch raise, each row is scored alone, so that only the row
        at fault goes without a score."""
        scores: list[float | None] = [None] * len(observed)
        where = [-1] * len(observed)
        rows = [i for i, entry in enumerate(observed) if entry is not None and entry[2].features is not None]
        for row, i in enumerate(rows):
            where[i] = row
        profile = profile_matrix([observed[i][2].features for i in rows])  # type: ignore[index,misc]
        try:
            for i, score in zip(rows, self.detector.anomaly_scores(profile), strict=True):
                scores[i] = score
        except Exception:
            log.exception("anomaly scores of a batch failed; scoring its rows one by one",
                          extra={"step": "shared_scoring"})
            for row, i in enumerate(rows):
                try:
                    scores[i] = self.detector.anomaly_scores(profile[row:row + 1])[0]
                except Exception:
                    scores[i] = None  # the transaction is refused
        return scores, profile, where

    def _share(self, event: Event, observation: Observation, verdict: Assessment | Exception | None
               ) -> tuple[Assessment | None, Alert | None, Prompt | None, float | None, tuple[float, bool] | None]:
        """The shared models on one event (score before learn): its fraud alert (a
        transaction, whose ``verdict`` the segment's assessment gave), its next-best-action
        prompt, its churn score (when the event counted for churn) and, for a fraud label that
        found its transaction, the score that transaction had and whether the label says fraud."""
        detector, config = self.detector, self.config
        if isinstance(verdict, Exception):
            raise verdict
        churn = nba_churn = None
        if observation.churn is not None:
            view = config.view
            churn = self.churn.score(observation.churn, view.churn)
            if observation.churn_label is not None:  # score before learn
                self.churn.learn(*observation.churn_label, view.churn)
            if observation.churn.active_days >= view.churn_min_active_days:
                nba_churn = churn  # a newcomer's score says nothing yet about leaving
        assessment = alert = outcome = None
        if isinstance(event, Transaction) and verdict is not None:
            assessment = verdict
            if assessment.alert_type is not None:
                alert = fraud_alert(event, assessment, observation.summary.rm_id, config.clock(event.t),
                                    config.locale)
        elif isinstance(event, Feedback) and event.ref_event_id and event.label in FRAUD_LABELS:
            is_fraud = event.label == "fraud"
            labelled = detector.observe_label(event.ref_event_id, event.t, is_fraud)
            outcome = (labelled, is_fraud) if labelled is not None else None
        prompt = None
        if self.nba is not None:
            prompt = self.nba.on_event(event, observation.summary, alert is not None, churn_score=nba_churn)
            if prompt is not None and config.locale != EN:
                action = next((a for a in config.actions if a.action_id == prompt.action), None)
                prompt = replace(prompt, reasons=localized(prompt.reasons, config.locale),
                                 title=action.title(config.locale) if action is not None else prompt.title)
        return assessment, alert, prompt, churn, outcome

    def _view(self, event: Event, customer: Customer, observation: Observation, assessment: Assessment | None,
              alert: Alert | None, prompt: Prompt | None, churn: float | None, out: list[Record]) -> None:
        """The customer's view of one event: fraud risk, open alerts, churn alerts, the alert
        lifecycle (de-duplication, grouping, escalation, snoozes); the records to emit."""
        params, view, lifecycle = self.config.view, customer.view, customer.lifecycle
        if isinstance(event, Control):
            if event.until_t is not None or event.action == "unsnooze":
                until = event.until_t if event.action == "snooze" and event.until_t is not None else event.t
                out.append(lifecycle.snooze(event.customer_id, event.alert_type, until, event.t,
                                            event.event_id, event.ts))
            return
        label = event.label if isinstance(event, Feedback) else None
        score = assessment.fraud_score if assessment is not None else None
        view.observe(observation.summary, event.t, score, alert is not None, label, params)
        alerts = [alert] if alert is not None else []
        evidence = observation.churn
        if churn is not None and evidence is not None:
            due = view.churn_alert_due(churn, evidence, params)
            if due is not None:
                alerts.append(churn_alert(event, observation.summary.rm_id, *due, self.config.clock(event.t),
                                          self.config.locale))
        voice = observation.voice
        if voice is not None and voice.escalation is not None:
            alerts.append(complaint_alert(event, observation.summary.rm_id, voice, self.config.clock(event.t),
                                          self.config.locale))
        for each in alerts:
            if params.lifecycle.enabled:
                emitted, changes = lifecycle.on_alert(each, event.t, params.lifecycle)
                if emitted is not None:
                    out.append(emitted)
                out.extend(changes)
            else:
                out.append(each)
        if prompt is not None:
            out.append(prompt)
        if assessment is not None and self.config.emit_scores:
            out.append(score_record(event, assessment, self.detector.models))  # type: ignore[arg-type]

    # -- the end of a replay ---------------------------------------------------------------

    def finish(self, watermark: float) -> list[Record]:
        """Every customer's state as of ``watermark`` (the stream's last event time), in
        customer order: the churn evidence brought to that time and scored by the final
        model; with ``fit_priors``, under BG/NBD priors fitted to the whole history (logged,
        so that a deployment can take them into its configuration)."""
        finals = []
        for customer_id in sorted(self.customers):
            try:
                evidence, rhythm = self.customers[customer_id].model.churn_evidence(watermark)
            except Exception:  # no event to dead-letter: the customer's final state is left out
                log.exception("customer %s: churn evidence at the end of the replay failed; no final state",
                              customer_id, extra={"step": "customer_profile"})
                continue
            finals.append((customer_id, evidence, rhythm))
        params = self.config.view.churn
        rhythms = [rhythm for _, _, rhythm in finals if rhythm is not None]
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
                finals = [(c, rhythm.requiet(evidence, params) if rhythm is not None else evidence, rhythm)
                          for c, evidence, rhythm in finals]
        out: list[Record] = []
        for customer_id, evidence, _ in finals:
            view = self.customers[customer_id].view
            if view.summary is None:
                continue
            try:
                out.append(customer_state(customer_id, view, evidence.t, self.churn.score(evidence, params),
                                          self.config.view))
            except Exception:
                log.exception("customer %s: the final state failed", customer_id, extra={"step": "customer_view"})
        return out


def process_all(shard: Shard, events: Iterable[Event], batch_size: int = 500) -> list[Record]:
    """``events`` through ``shard`` in batches of ``batch_size`` (tests and tools)."""
    out: list[Record] = []
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) == batch_size:
            out.extend(shard.process(batch))
            batch = []
    if batch:
        out.extend(shard.process(batch))
    return out
