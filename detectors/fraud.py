"""The suspicious-transaction detector: rules + anomaly model + supervised model, one score.

``FraudDetector.assess(event_id, t, counterparty_id, features, hits, anomaly_score)`` takes a
transaction with its customer-profile features and the rules it hit (both from the
customer's own state) and its anomaly score (``anomaly_scores`` scores a batch of
transactions ahead), and adds what is shared across customers: the counterparty's risk
learned from feedback and the supervised model. It returns an ``Assessment``: ``fraud_score`` in [0, 1] (higher = more
suspicious), the alert it calls for (if any) and the reasons. It scores before it learns.

How the score is made. Before fraud labels exist the score is a prior: a noisy-OR of the
rule weights and the anomaly score. As fraud labels arrive the supervised model, which sees
the rules and the anomaly score as features too, takes over: the weight of the model is
``n_frauds / (n_frauds + warmup_frauds)``. The logistic model is trained on the label mix
the engine receives, so its output is a probability, i.e. calibrated to that mix.

``observe_feedback`` turns a ``fraud``/``legit`` label into a training example (the vector
the transaction was scored with) and a counterparty label; ``advance(now)`` takes
unlabelled transactions older than the label horizon as legitimate.
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Final

import numpy as np

from detectors.anomaly import SQUASHED, AnomalyModel, AnomalyParams, squash_rows
from detectors.counterparty import COUNTERPARTY_FEATURES, CounterpartyParams, CounterpartyRisk
from detectors.profile import FEATURES, INDEX
from detectors.risk_tables import TABLES, RateTableParams, RateTables
from detectors.risk_tables import cells as risk_cells
from detectors.rules import RuleHit
from detectors.supervised import DelayedLabels, FraudClassifier, Pending, SupervisedParams
from schemas.outputs import AlertType, Reason, Severity

RULE_CODES: Final = (
    "large_vs_history", "velocity_burst", "card_testing", "takeover_sequence", "structuring",
    "rapid_in_out", "dormant_reactivation", "unusual_foreign",
)
#: The supervised model's features, in the order of the vectors it is given.
MODEL_FEATURES: Final = (*FEATURES, *COUNTERPARTY_FEATURES, "anomaly",
                         *(f"risk_{name}" for name in TABLES),
                         *(f"rule_{code}" for code in RULE_CODES))
_MODEL_INDEX: Final = {name: i for i, name in enumerate(MODEL_FEATURES)}
_RULE_INDEX: Final = {code: i for i, code in enumerate(RULE_CODES)}
_squashed_columns: Final = itemgetter(*(INDEX[name] for name in SQUASHED))
MODEL_REVISION: Final = "fraud-1"

FEATURE_TEXT: Final = {
    "amount_to_mean": "amount relative to the customer's typical amount",
    "amount_z": "amount unusual for this customer",
    "log_amount": "large amount",
    "cp_fraud_rate_28d": "counterparty's recent confirmed fraud rate",
    "cp_frauds_7d": "frauds confirmed at this counterparty in the last 7 days",
    "cp_frauds_28d": "frauds confirmed at this counterparty in the last 28 days",
    "cust_frauds_14d": "fraud confirmed on this customer in the last 14 days",
    "new_counterparty": "first transaction with this counterparty",
    "new_device": "first use of this device",
    "new_country": "first transaction in this country",
    "velocity_1d": "more transactions today than usual",
    "cnt_1h": "many transactions in the last hour",
    "anomaly": "behaviour unlike the customer population's",
    "risk_amount": "amounts like this were often fraud recently",
    "risk_amount_to_mean": "amounts this far above the customer's usual were often fraud recently",
    "risk_counterparty_state": "counterparties in this state were often fraud recently",
    "risk_customer_state": "customers in this state were often defrauded recently",
    "cp_fraud_logodds": "counterparty's recent confirmed fraud rate",
}


@dataclass(frozen=True, slots=True)
class FraudParams:
    """How the parts are blended and when an alert fires."""

    alert_threshold: float = 0.6
    warmup_frauds: float = 50.0  # fraud labels before the model's weight reaches one half
    anomaly_weight: float = 0.5  # weight of the anomaly score in the prior
    severity_bands: tuple[float, float, float] = (0.6, 0.8, 0.95)  # medium, high, critical
    anomaly: AnomalyParams = field(default_factory=AnomalyParams)
    counterparty: CounterpartyParams = field(default_factory=CounterpartyParams)
    supervised: SupervisedParams = field(default_factory=SupervisedParams)
    rate_tables: RateTableParams = field(default_factory=RateTableParams)


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Assessment:
    """The verdict on one transaction."""

    fraud_score: float
    model_score: float
    prior_score: float
    anomaly_score: float
    alert_type: AlertType | None
    severity: Severity
    reasons: tuple[Reason, ...]
    model_version: str


def severity_of(score: float, bands: tuple[float, float, float]) -> Severity:
    """``low`` below the first band, then ``medium``, ``high``, ``critical``.

    >>> severity_of(0.85, (0.6, 0.8, 0.95))
    'high'
    """
    medium, high, critical = bands
    if score >= critical:
        return "critical"
    if score >= high:
        return "high"
    return "medium" if score >= medium else "low"


class FraudDetector:
    """Shared (cross-customer) fraud state: counterparty risk, anomaly and supervised models."""

    def __init__(self, params: FraudParams | None = None) -> None:
        self.params = params or FraudParams()
        p = self.params
        self.counterparties = CounterpartyRisk(p.counterparty)
        self.anomaly = AnomalyModel(p.anomaly)
        self.classifier = FraudClassifier(MODEL_FEATURES, p.supervised)
        self.pending = DelayedLabels(p.supervised)
        self.rate_tables = RateTables(p.rate_tables)
        self.unmatched_labels = 0  # feedback whose transaction was never scored or expired
        self.dropped_pending = 0  # scored transactions forgotten unlabelled (max_pending)

    @property
    def model_version(self) -> str:
        return f"{MODEL_REVISION}.{self.classifier.n_labels}"

    def anomaly_scores(self, rows: list[list[float]]) -> list[float]:
        """Anomaly scores of a batch of transactions' profile features, in stream order.

        The forest learns the rows, each only after it was scored (see ``detectors.anomaly``);
        nothing else in the detector depends on the forest, so the batch is scored ahead of
        ``assess``, which takes each row's score.
        """
        if not rows:
            return []
        columns = np.fromiter(chain.from_iterable(map(_squashed_columns, rows)), float,
                              count=len(rows) * len(SQUASHED))
        squashed = squash_rows(columns.reshape(len(rows), len(SQUASHED)))
        scores: list[float] = self.anomaly.score_learn(squashed).tolist()
        return scores

    def assess(self, txn_event_id: str, t: float, counterparty_id: str | None,
               features: list[float], hits: list[RuleHit], anomaly_score: float) -> Assessment:
        """Score a transaction (score before learn), then learn from it."""
        p = self.params
        x = features + self.counterparties.features(counterparty_id, t)
        x.append(anomaly_score)
        cells = risk_cells(x)
        x.extend(self.rate_tables.log_odds(cells, t))
        flags = [0.0] * len(RULE_CODES)
        not_hit = 1.0 - p.anomaly_weight * anomaly_score
        for hit in hits:
            flags[_RULE_INDEX[hit.code]] = 1.0
            not_hit *= 1.0 - hit.weight
        x.extend(flags)
        if not math.isfinite(sum(x)):  # a non-finite value would poison every shared model
            raise ValueError("a transaction whose features are not all finite")
        vector = array("d", x)
        clf = self.classifier
        model_score = clf.predict_proba_one(vector) if clf.n_frauds else 0.0
        prior = 1.0 - not_hit
        trust = clf.n_frauds / (clf.n_frauds + p.warmup_frauds)
        score = round(min(1.0, max(0.0, trust * model_score + (1.0 - trust) * prior)), 6)
        alert_type, severity = self._alert(score, hits)
        reasons = self._reasons(vector, hits, trust, anomaly_score) if alert_type else ()
        # Learn only after scoring: the transaction must not explain itself.
        self.counterparties.observe_transaction(counterparty_id, t)
        for _overflow in self.pending.add(txn_event_id, Pending(t, counterparty_id, vector, cells, score)):
            self.dropped_pending += 1
        return Assessment(score, round(model_score, 6), round(prior, 6), round(anomaly_score, 6),
                          alert_type, severity, reasons, self.model_version)

    def _alert(self, score: float, hits: list[RuleHit]) -> tuple[AlertType | None, Severity]:
        p = self.params
        mandatory = [h for h in hits if h.always_alert]
        if score < p.alert_threshold and not mandatory:
            return None, "low"
        severity = severity_of(score, p.severity_bands)
        if mandatory and severity == "low":
            severity = "medium"
        # The most specific typology wins: a takeover or laundering pattern says more than
        # "suspicious"; among the hits the heaviest decides.
        typed = sorted(hits, key=lambda h: (h.alert_type == "suspicious_transaction", -h.weight))
        return (typed[0].alert_type if typed else "suspicious_transaction"), severity

    def _reasons(self, vector: array[float], hits: list[RuleHit], trust: float,
                 anomaly_score: float) -> tuple[Reason, ...]:
        reasons = [Reason(h.code, h.text, h.value, round(h.weight, 4)) for h in hits]
        if trust > 0:
            for name, contribution in self.classifier.explain(vector):
                text = FEATURE_TEXT.get(name, name.replace("_", " "))
                reasons.append(Reason(f"model:{name}", text, round(vector[_MODEL_INDEX[name]], 4),
                                      round(contribution * trust, 4)))
        if anomaly_score >= 0.5:
            reasons.append(Reason("anomaly", FEATURE_TEXT["anomaly"], round(anomaly_score, 4),
                                  round(self.params.anomaly_weight * anomaly_score * (1 - trust), 4)))
        return tuple(reasons)

    def observe_label(self, ref_event_id: str, known_at: float, is_fraud: bool) -> float | None:
        """Learn from a label for a scored transaction; return the fraud_score it was given,
        or None if it is not (or no longer) known."""
        entry = self.pending.pop(ref_event_id)
        if entry is None:
            self.unmatched_labels += 1
            return None
        self._learn(entry, known_at, is_fraud)
        return entry.score

    def _learn(self, entry: Pending, known_at: float, is_fraud: bool, weight: float = 1.0) -> None:
        clf = self.classifier
        if weight > 0:
            clf.learn_one(entry.vector, is_fraud, weight)
        self.counterparties.observe_label(entry.counterparty_id, known_at, is_fraud, entry.t)
        self.rate_tables.learn(entry.cells, known_at, is_fraud)

    def advance(self, now: float) -> int:
        """Take transactions past the label horizon as legitimate; return how many.

        Only a deterministic sample (``implicit_legit_sample``, by event id) trains the
        classifier, weighted up by the inverse rate so probabilities stay calibrated; every
        one still counts as a label of its counterparty.
        """
        rate = self.params.supervised.implicit_legit_sample
        threshold = int(rate * 2**32)
        n = 0
        for event_id, entry in self.pending.expire(now):
            sampled = zlib.crc32(event_id.encode()) < threshold
            self._learn(entry, now, False, 1.0 / rate if sampled else 0.0)
            n += 1
        return n
