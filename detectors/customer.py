"""Everything the engine keeps per customer, framework-free.

``CustomerModel`` (the upstream, per-customer step) owns the behavioural profile, evaluates
the rules and keeps the churn evidence; ``CustomerView`` (the downstream, per-customer step)
keeps what the customer-facing outputs need: the latest ``Summary`` of the profile, fraud
risk from the recent scores, the open alerts and when the last churn alert was. Both are
small and pickle cheaply.

>>> from schemas.events import parse_event
>>> m = CustomerModel()
>>> ev = parse_event(b'{"kind":"profile","event_id":"p","customer_id":"c","ts":"2026-01-01T00:00:00Z",'
...                  b'"rm_id":"rm1","risk_level":3}')
>>> m.observe(ev).summary.rm_id
'rm1'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from detectors.churn import CHURN_LABELS, ChurnEvidence, ChurnParams, ChurnState, Rhythm
from detectors.lifecycle import LifecycleParams
from detectors.profile import DAY, NO_TRAITS, CustomerProfile, ProfileParams, Traits
from detectors.rules import RuleHit, RuleParams, evaluate_rules
from detectors.voice import VOICE_ACTIONS, VoiceParams, VoiceScore, VoiceScorer, VoiceState
from schemas.events import AppEvent, Event, Feedback, Profile, Transaction
from schemas.outputs import Reason
from schemas.snapshots import restore_fields

FRAUD_LABELS: Final = frozenset({"fraud", "legit"})  # the labels that train the fraud models


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Summary:
    """What downstream steps need to know about a customer, as of its latest event."""

    rm_id: str | None
    segment: str | None
    risk_level: int | None
    marketing_opt_out: bool
    first_t: float | None
    last_t: float | None
    prev_t: float | None  # the latest event before this one (of any kind)
    mean_gap: float | None
    n_txns: int
    n_app: int
    traits: Traits = NO_TRAITS  # (birth_year, gender, city_tier) from the latest profile

    __setstate__ = restore_fields


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Observation:
    """The result of one event for one customer: features and rule hits for transactions,
    and the churn evidence when the event says something about churn."""

    summary: Summary
    features: list[float] | None = None  # detectors.profile.FEATURES order
    hits: list[RuleHit] | None = None
    churn: ChurnEvidence | None = None  # as of this event, if it counted for churn
    # A churned / retained label: (the evidence it teaches, from one horizon before; churned).
    churn_label: tuple[ChurnEvidence, bool] | None = None
    voice: Voice | None = None  # a customer's text, read


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Voice:
    """A text's reading and, when its tone calls for one, the customer's usual and recent
    tone behind a ``complaint_escalation``."""

    score: VoiceScore
    escalation: tuple[float, float] | None = None


class CustomerModel:
    """Per-customer profile, rules and churn evidence."""

    __slots__ = ("churn", "churn_params", "profile", "rules", "scorer", "voice")

    def __init__(self, profile_params: ProfileParams | None = None,
                 rule_params: RuleParams | None = None, churn_params: ChurnParams | None = None,
                 scorer: VoiceScorer | None = None) -> None:
        self.profile = CustomerProfile(profile_params)
        self.rules = rule_params or RuleParams()
        self.churn = ChurnState()
        self.churn_params = churn_params or ChurnParams()  # not pickled: the step sets it
        self.scorer = scorer  # reads customers' texts (None: off); not pickled, the step sets it
        self.voice: VoiceState | None = None  # the customer's tone, from their first text on

    def observe(self, event: Event) -> Observation:
        """Fold ``event`` in; for a transaction, its features and rule hits (before learning).

        The churn evidence is handed on when the event changed it: a new active day, an exit
        signal or a churn label. More events of a day already counted change nothing the
        score is made of except the clock, which moves it by a hair; skipping them saves
        most of churn's cost (most events are not a customer's first of the day).
        """
        profile, churn, p = self.profile, self.churn, self.churn_params
        features: list[float] | None = None  # detectors.profile.FEATURES order
        hits: list[RuleHit] | None = None
        active_days, signals, prev_t = churn.x, churn.signals, profile.last_t
        label: tuple[ChurnEvidence, bool] | None = None
        voice: Voice | None = None
        if isinstance(event, Transaction):
            features = profile.observe_transaction(event)
            hits = evaluate_rules(features, event, self.rules)
            churn.observe_activity(event.t, event.amount, p)
            if event.direction == "debit" and event.txn_type == "transfer":
                churn.observe_outflow(event.t, event.amount, event.balance_after, p)
            elif event.balance_after is not None:
                churn.observe_balance(event.balance_after)
        elif isinstance(event, AppEvent):
            if self.scorer is not None and event.action in VOICE_ACTIONS and event.properties:
                voice = self._read(event)  # first: a text that fails changes nothing
            profile.observe_app(event)
            if event.action == "login":
                churn.observe_activity(event.t, 0.0, p)
            else:
                churn.observe_signal(event.action, event.t, p)
        elif isinstance(event, Feedback):
            profile.observe_feedback(event)
            if event.label in CHURN_LABELS:
                before = churn.observe_label(event.label, event.t, p)
                label = (before, event.label == "churned") if before is not None else None
                active_days = -1  # a label always counts
        elif isinstance(event, Profile):
            profile.observe_profile(event)
        if voice is not None:
            score = voice.score
            churn.observe_voice(score.sentiment, score.label == "negative", score.intents, score.phrase, event.t, p)
        counted = churn.x != active_days or churn.signals is not signals
        return Observation(self._summarise(prev_t), features, hits,
                           churn.evidence(event.t, p) if counted else None, label, voice)

    def _read(self, event: AppEvent) -> Voice | None:
        """The reading of the event's ``properties.text``, folded into the customer's tone."""
        assert self.scorer is not None and event.properties is not None
        score = self.scorer.score(event.properties.get("text"))
        if score is None:
            return None
        if self.voice is None:
            self.voice = VoiceState()
        return Voice(score, self.voice.observe(score, event.t, self.scorer.params))

    def churn_evidence(self, now: float) -> tuple[ChurnEvidence, Rhythm | None]:
        """The churn evidence and the customer's rhythm as of event time ``now`` (say, the end
        of a replay)."""
        return self.churn.evidence(now, self.churn_params), self.churn.history_summary(now)

    def _summarise(self, prev_t: float | None) -> Summary:
        p = self.profile
        return Summary(p.rm_id, p.segment, p.risk_level, p.marketing_opt_out, p.first_t,
                       p.last_t, prev_t, p.mean_gap, p.n_txns, p.n_app, p.traits)

    def __getstate__(self) -> tuple[CustomerProfile, RuleParams, ChurnState, VoiceState | None]:
        return (self.profile, self.rules, self.churn, self.voice)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.profile, self.rules, self.churn = state[:3]  # type: ignore[assignment]
        self.voice = state[3] if len(state) > 3 else None  # type: ignore[assignment]
        self.churn_params = ChurnParams()
        self.scorer = None


@dataclass(frozen=True, slots=True)
class ViewParams:
    """How fraud risk decays and churn is scored."""

    fraud_risk_halflife_days: float = 7.0
    churn: ChurnParams = field(default_factory=ChurnParams)
    churn_threshold: float = 0.8  # a churn_risk alert at or above this score
    churn_cooldown_days: float = 30.0  # at most one churn_risk alert per customer in this time ...
    churn_escalation: float = 0.1  # ... unless the score rose by this much since the last
    churn_min_active_days: int = 5  # no alert before a customer has a rhythm to depart from
    lifecycle: LifecycleParams = field(default_factory=LifecycleParams)
    voice: VoiceParams = field(default_factory=VoiceParams)  # customers' texts (detectors.voice)


class CustomerView:
    """The customer as risk teams and RMs see it: latest summary, fraud risk, open alerts
    and the last churn alert."""

    __slots__ = ("churn_alert", "churn_armed", "confirmed_fraud_t", "last_seen_t", "open_alerts", "risk", "risk_t",
                 "summary")

    def __init__(self) -> None:
        self.summary: Summary | None = None
        self.risk = 0.0  # the highest recent fraud score, decayed to risk_t
        self.risk_t = 0.0
        self.confirmed_fraud_t: float | None = None
        self.open_alerts = 0
        self.churn_alert: tuple[float, float] | None = None  # (event time, score) of the last churn alert
        self.churn_armed = False  # the score was below the threshold since the last churn alert
        self.last_seen_t: float | None = None  # the latest event of any kind (a profile too)

    def _decayed(self, now: float, params: ViewParams) -> float:
        halflife = params.fraud_risk_halflife_days * DAY
        return self.risk * 0.5 ** (max(0.0, now - self.risk_t) / halflife)

    def observe(self, summary: Summary, t: float, fraud_score: float | None, alerted: bool,
                label: str | None, params: ViewParams) -> None:
        """Record one processed event of this customer."""
        self.summary = summary
        if self.last_seen_t is None or t > self.last_seen_t:
            self.last_seen_t = t
        if fraud_score is not None:
            decayed = self._decayed(t, params)
            self.risk, self.risk_t = max(decayed, fraud_score), t
        if alerted:
            self.open_alerts += 1
        if label == "fraud":
            self.confirmed_fraud_t = t

    def fraud_risk(self, now: float, params: ViewParams) -> float:
        """Fraud risk in [0, 1] as of ``now``: recent scores decay; confirmed fraud counts fully."""
        risk = self._decayed(now, params)
        if self.confirmed_fraud_t is not None:
            halflife = params.fraud_risk_halflife_days * DAY
            risk = max(risk, 0.5 ** (max(0.0, now - self.confirmed_fraud_t) / halflife))
        return min(1.0, risk)

    def churn_alert_due(self, score: float, evidence: ChurnEvidence,
                        params: ViewParams) -> tuple[float, list[Reason]] | None:
        """Take the churn ``score`` (of ``evidence``, as of its time); the score and reasons of
        a ``churn_risk`` alert due then, if one is.

        An alert fires when the score crosses ``churn_threshold`` from below (a customer who is
        always above it, say one who buys twice a year, is not news), at most once per
        ``churn_cooldown_days``, unless the score rose by ``churn_escalation`` since the last
        alert; never before the customer has ``churn_min_active_days`` repeat active days.
        """
        if evidence.active_days < params.churn_min_active_days:
            return None
        if score < params.churn_threshold:
            self.churn_armed = True
            return None
        now, last = evidence.t, self.churn_alert
        escalated = last is not None and score >= last[1] + params.churn_escalation
        cooled = last is None or now - last[0] >= params.churn_cooldown_days * DAY
        if not (escalated or (self.churn_armed and cooled)):
            return None
        self.churn_alert, self.churn_armed = (now, score), False
        return score, evidence.reasons(score, params.churn)

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)
