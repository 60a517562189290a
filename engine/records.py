"""The output records the engine assembles from its detectors' verdicts: alerts (fraud and
churn), per-event scores, the customer state and the fraud models' reports and champion
changes (``schemas.outputs``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from detectors.challengers import Change
from detectors.customer import CustomerView, ViewParams, Voice
from detectors.fairness import FairnessCheck
from detectors.fraud import Assessment
from schemas.events import Event, Transaction
from schemas.outputs import (
    NO_CUSTOMER,
    Alert,
    CustomerState,
    ModelChange,
    ModelFigures,
    ModelReport,
    Reason,
    Score,
    Severity,
    alert_id_for,
    format_ts,
    model_record_id,
)
from schemas.texts import EN

CHURN_MODEL_VERSION: Final = "churn-bgnbd-prior-3"
VOICE_MODEL_VERSION: Final = "voice-vader-snownlp-1"
FAIRNESS_VERSION: Final = "nba-fairness-1"
#: A churn score from which a churn alert is ``high`` rather than ``medium``.
CHURN_HIGH: Final = 0.95


def localized(reasons: Iterable[Reason], locale: str) -> tuple[Reason, ...]:
    """``reasons`` with their texts in ``locale`` (``schemas.texts``)."""
    return tuple(reason.localized(locale) for reason in reasons)


def fraud_alert(event: Transaction, assessment: Assessment, rm_id: str | None, emitted_at: str,
                locale: str = EN) -> Alert:
    """The alert a transaction's assessment calls for (``assessment.alert_type`` is set)."""
    assert assessment.alert_type is not None
    return Alert(alert_id=alert_id_for(event.event_id, assessment.alert_type), type=assessment.alert_type,
                 severity=assessment.severity, score=assessment.fraud_score, customer_id=event.customer_id,
                 rm_id=rm_id, event_id=event.event_id, event_ts=event.ts, emitted_at=emitted_at,
                 reasons=localized(assessment.reasons, locale), model_version=assessment.model_version)


def churn_alert(event: Event, rm_id: str | None, score: float, reasons: list[Reason], emitted_at: str,
                locale: str = EN) -> Alert:
    """A ``churn_risk`` alert to the customer's RM, as of this event of theirs."""
    severity: Severity = "high" if score >= CHURN_HIGH else "medium"
    return Alert(alert_id=alert_id_for(event.event_id, "churn_risk"), type="churn_risk", severity=severity,
                 score=round(score, 6), customer_id=event.customer_id, rm_id=rm_id, event_id=event.event_id,
                 event_ts=event.ts, emitted_at=emitted_at, reasons=localized(reasons, locale),
                 model_version=CHURN_MODEL_VERSION)


def complaint_alert(event: Event, rm_id: str | None, voice: Voice, emitted_at: str, locale: str = EN) -> Alert:
    """A ``complaint_escalation`` alert to the customer's RM: the customer named the regulator
    (``high``), or the tone of their texts fell sharply (``medium``); the phrase quoted, masked."""
    assert voice.escalation is not None
    usual, recent = voice.escalation
    score = voice.score
    reasons: list[Reason] = []
    if "regulator_complaint" in score.intents:
        reasons.append(Reason.of("voice_regulator", score.phrase, 1.0, phrase=score.phrase))
    if usual - recent > 0:
        reasons.append(Reason.of("voice_sentiment_drop", round(usual - recent, 4), 1.0, usual=usual, recent=recent,
                                 phrase=score.phrase))
    severity: Severity = "high" if "regulator_complaint" in score.intents else "medium"
    value = 1.0 if severity == "high" else min(1.0, max(0.0, (usual - recent) / 2 + 0.5))
    return Alert(alert_id=alert_id_for(event.event_id, "complaint_escalation"), type="complaint_escalation",
                 severity=severity, score=round(value, 6), customer_id=event.customer_id, rm_id=rm_id,
                 event_id=event.event_id, event_ts=event.ts, emitted_at=emitted_at,
                 reasons=localized(reasons, locale), model_version=VOICE_MODEL_VERSION)


def fairness_alerts(check: FairnessCheck, threshold: float, emitted_at: str, locale: str = EN) -> list[Alert]:
    """A ``fairness_drift`` alert per dimension in which ``check`` found a group under
    ``threshold``, to administrators (no customer, no RM); the reasons name each breach."""
    alerts = []
    event_id, event_ts, _ = check.closed_by
    window_end = format_ts(check.end)
    for dimension in dict.fromkeys(d.dimension for d in check.breaches):
        breaches = [d for d in check.breaches if d.dimension == dimension]
        reasons = tuple(Reason.of("fairness_ratio", round(d.ratio, 6), round(1.0 - d.ratio, 6),
                                  dimension=d.dimension, group=d.value, metric=d.metric, rate=round(d.rate, 6),
                                  best=round(d.best, 6), ratio=round(d.ratio, 6), threshold=threshold,
                                  window_start=format_ts(check.start), window_end=window_end)
                        for d in breaches)
        worst = min(d.ratio for d in breaches)
        alerts.append(Alert(alert_id=alert_id_for(f"fairness:{window_end}:{dimension}", "fairness_drift"),
                            type="fairness_drift", severity="medium", score=round(1.0 - worst, 6),
                            customer_id=NO_CUSTOMER, rm_id=None, event_id=event_id, event_ts=event_ts,
                            emitted_at=emitted_at, reasons=localized(reasons, locale),
                            model_version=FAIRNESS_VERSION))
    return alerts


def score_record(event: Transaction, assessment: Assessment, models: tuple[str, ...]) -> Score:
    """The per-event scores of a transaction (replay output): beside the champion's
    ``fraud_score``, every model's as ``score_<model>``."""
    extra = {"model_score": assessment.model_score, "prior_score": assessment.prior_score,
             "anomaly_score": assessment.anomaly_score}
    extra.update(zip([f"score_{model}" for model in models], assessment.model_scores, strict=True))
    return Score(event.event_id, event.customer_id, event.ts, assessment.fraud_score, extra)


def model_report(as_of: float, champion: str, figures: tuple[ModelFigures, ...]) -> ModelReport:
    """The fraud models' evaluation at event time ``as_of``."""
    ts = format_ts(as_of)
    return ModelReport(model_record_id("mr", ts), ts, champion, figures)


def model_change(change: Change, versions: dict[str, str]) -> ModelChange:
    """A change of champion fraud model, for the audit trail."""
    ts = format_ts(change.at)
    return ModelChange(model_record_id("mc", ts, change.to_model), change.action, change.from_model,
                       change.to_model, versions[change.to_model], change.reason, ts, change.figures)


def customer_state(customer_id: str, view: CustomerView, now: float, churn_score: float,
                   params: ViewParams) -> CustomerState:
    """The customer as of event time ``now``, with the churn score as of then."""
    summary = view.summary
    # A customer known only from reference data (a profile) has no activity: their last
    # event is that profile.
    last_t = summary.last_t if summary is not None and summary.last_t is not None else view.last_seen_t
    if summary is None or last_t is None:
        raise ValueError(f"customer {customer_id} has no event to take a state from")
    return CustomerState(
        customer_id=customer_id, churn_score=round(churn_score, 6),
        fraud_risk=round(view.fraud_risk(now, params), 6), last_event_ts=format_ts(last_t), as_of=format_ts(now),
        rm_id=summary.rm_id, segment=summary.segment, risk_level=summary.risk_level, n_txns=summary.n_txns,
        n_app_events=summary.n_app, open_alerts=view.open_alerts)
