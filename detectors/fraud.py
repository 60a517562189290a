"""The suspicious-transaction detector: rules + anomaly model + supervised model, one score.

``FraudDetector.assess_batch(rows)`` takes transactions, each with its customer-profile
features and the rules it hit (both from the customer's own state) and its anomaly score
(``anomaly_scores`` scores a batch of transactions ahead), and adds what is shared across
customers: the counterparty's risk learned from feedback, fraud rates per cell (rate tables)
and the supervised model. Each gets an ``Assessment``: ``fraud_score`` in [0, 1] (higher =
more suspicious), the alert it calls for (if any) and the reasons. It scores before it learns.

How the score is made. Before fraud labels exist the score is a prior: a noisy-OR of the
rule weights and the anomaly score. As fraud labels arrive the supervised model, which sees
the rules and the anomaly score as features too, takes over: the weight of the model is
``n_frauds / (n_frauds + warmup_frauds)``. The logistic model is trained on the label mix
the engine receives, so its output is a probability, i.e. calibrated to that mix.

Model ticks. The shared models (counterparty risk, rate tables, supervised model) change only
at event-time ticks, every ``model_tick_s``: the labels that arrive during a tick, the
transactions it scores (the counterparties' traffic) and the unlabelled transactions whose
label horizon passed are learned, in order, when the clock (``advance``) crosses the tick's
end. Between ticks the models are read-only, so the transactions of a tick are scored in a
few numpy operations (``assess_batch``), and every replica of the models that has learned
the same ticks scores alike. A label is used at most one tick after it arrives.

A tick's learning (its ``Lesson``) costs a few microseconds per item, and live at real pace
an hour holds millions of them: learned at once, it would stop the worker for tens of
seconds. So a lesson of more than ``tick_slice_items`` items (traffic and labels) is cut into
as many even slices as that takes, learned in order at event times spread evenly over the
next tick (the first at the tick's end): the models then change at each slice, a few
milliseconds of work each. A lesson within the limit is learned at once, at the tick's end,
as before. Where the slices fall depends on event time and the stream alone, so replay still
equals live.

``observe_label`` turns a ``fraud``/``legit`` label into a training example (the vector the
transaction was scored with) and a counterparty label; unlabelled transactions older than
the label horizon are taken as legitimate.

Champion and challenger (``detectors.challengers``). The score above is the ``linear``
model's; a gradient-boosted challenger (``gbm``) scores the same vectors, learns from the
same labels (retrained at event-time intervals on a window of them) and every model's score
is kept with the transaction until its label comes, for the prequential evaluation at the
tick ends. ``fraud_score`` is the champion's; ``drain`` hands the engine the evaluations
and champion changes to report.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from itertools import chain
from typing import Final, TypeVar

import numpy as np

from detectors.anomaly import SQUASHED, AnomalyModel, AnomalyParams, squash_rows
from detectors.challengers import LINEAR, TREES, BoostedTrees, ChampionChallenger, ChampionParams, Change, TreesParams
from detectors.counterparty import COUNTERPARTY_FEATURES, CounterpartyParams, CounterpartyRisk
from detectors.profile import FEATURES, INDEX
from detectors.risk_tables import (
    CATEGORY_BUCKETS,
    CHANNEL_BUCKETS,
    TABLES,
    AmountNorms,
    RateTableParams,
    RateTables,
    bucket,
)
from detectors.risk_tables import cells_batch as risk_cells_batch
from detectors.rules import RuleHit
from detectors.supervised import DelayedLabels, FraudClassifier, Pending, SupervisedParams
from schemas.outputs import AlertType, ModelFigures, Reason, Severity
from schemas.snapshots import restore_fields
from schemas.texts import EN, localized_text

RULE_CODES: Final = (
    "large_vs_history", "velocity_burst", "card_testing", "takeover_sequence", "structuring",
    "rapid_in_out", "dormant_reactivation", "unusual_foreign",
)
#: The supervised model's features, in the order of the vectors it is given.
MODEL_FEATURES: Final = (*FEATURES, *COUNTERPARTY_FEATURES, "anomaly", "amount_vs_category",
                         *(f"risk_{name}" for name in TABLES),
                         *(f"rule_{code}" for code in RULE_CODES))
_MODEL_INDEX: Final = {name: i for i, name in enumerate(MODEL_FEATURES)}
_RULE_INDEX: Final = {code: i for i, code in enumerate(RULE_CODES)}
_ANOMALY_COLUMN: Final = _MODEL_INDEX["anomaly"]
_LOG_AMOUNT_COLUMN: Final = INDEX["log_amount"]
_SQUASHED_COLUMNS: Final = np.array([INDEX[name] for name in SQUASHED])

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def profile_matrix(rows: list[list[float]] | np.ndarray) -> np.ndarray:
    """Profile feature rows (``detectors.profile.FEATURES`` order) as one (rows, features) array."""
    if isinstance(rows, np.ndarray):
        return rows
    n = len(rows)
    return np.fromiter(chain.from_iterable(rows), float, count=n * len(FEATURES)).reshape(n, len(FEATURES))


def _feature_reason(name: str, value: float, weight: float) -> Reason:
    """A model feature as a reason: its text from the catalogue (``schemas.texts``), or its name."""
    code = f"model:{name}"
    return Reason(code, localized_text(code, name.replace("_", " "), None, EN), value, weight)


MODEL_REVISION: Final = "fraud-2"



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
    model_tick_s: float = 3600.0  # the shared models learn at the end of every tick of this much event time
    gbm: TreesParams = field(default_factory=TreesParams)
    champion: ChampionParams = field(default_factory=ChampionParams)
    # A tick's learning of more items (traffic and labels) than this is spread over the next
    # tick in slices of at most this many (0: always at once, at the tick's end).
    tick_slice_items: int = 2000

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        if not self.model_tick_s > 0:
            raise ValueError(f"model_tick_s must be positive, got {self.model_tick_s}")
        if self.tick_slice_items < 0:
            raise ValueError(f"tick_slice_items must be 0 or more, got {self.tick_slice_items}")
        if self.champion.champion == TREES and not self.gbm.enabled:
            raise ValueError("the champion is the gradient-boosted model, which is not enabled (fraud.gbm.enabled)")


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
    model_scores: tuple[float, ...] = ()  # every model's score, in ``FraudDetector.models`` order


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


@dataclass(frozen=True, slots=True)
class Transaction:
    """What the detector needs of one transaction to assess it (``FraudDetector.assess_batch``)."""

    event_id: str
    t: float
    counterparty_id: str | None
    hits: list[RuleHit]
    anomaly: float
    category: str | None = None  # merchant category
    channel: str | None = None


@dataclass
class Lesson:
    """What the tick ending at ``end`` brought, to learn in ``slices`` even parts (the counterparties'
    traffic, the scored amounts by category, and the labels in arrival order, then the
    transactions past their label horizon); slice ``i`` is due at event time ``end + i * step``."""

    end: float
    traffic: list[tuple[str | None, float]]
    categories: list[int]
    log_amounts: list[float]
    labels: list[tuple[Pending, float, bool, float]]
    slices: int = 1
    step: float = 0.0
    done: int = 0  # slices learned

    @property
    def due(self) -> float:
        """The event time of the next slice."""
        return self.end + self.done * self.step

    def part(self, items: list[_T], i: int) -> list[_T]:
        """Slice ``i`` of ``items``."""
        n, k = len(items), self.slices
        return items[i * n // k:(i + 1) * n // k]


class FraudDetector:
    """Shared (cross-customer) fraud state: counterparty risk, anomaly and supervised models."""

    _lesson: Lesson | None = None  # the last tick's learning, while its slices are not all learned

    def __setstate__(self, state: dict[str, object]) -> None:
        amounts = state.pop("_amounts", None)  # an earlier release's: (buckets, log-amounts) arrays per batch
        if isinstance(amounts, list):
            state["_categories"] = [c for pair in amounts for c in pair[0].tolist()]
            state["_log_amounts"] = [a for pair in amounts for a in pair[1].tolist()]
        self.__dict__.update(state)

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
        self.tick_end: float | None = None  # the end of the current model tick (event time)
        self._labels: list[tuple[Pending, float, bool, float]] = []  # learned at the tick's end
        self._traffic: list[tuple[str | None, float]] = []
        self.norms = AmountNorms(p.rate_tables.halflife_days)  # each merchant category's usual amount
        self._categories: list[int] = []  # the category buckets and log-amounts scored in the tick
        self._log_amounts: list[float] = []
        self.trees = BoostedTrees(len(MODEL_FEATURES), p.gbm) if p.gbm.enabled else None
        self.models: tuple[str, ...] = (LINEAR, TREES) if self.trees is not None else (LINEAR,)
        self.selection = ChampionChallenger(p.champion, self.models)
        self.evaluated: list[tuple[float, str, tuple[ModelFigures, ...]]] = []  # (as of, champion, figures)
        self.changes: list[Change] = []  # to report (``drain``)

    @property
    def model_version(self) -> str:
        """The version of the champion, the model whose score decides alerts."""
        return self.versions()[self.selection.champion]

    def versions(self) -> dict[str, str]:
        versions = {LINEAR: f"{MODEL_REVISION}.{self.classifier.n_labels}"}
        if self.trees is not None:
            versions[TREES] = self.trees.version
        return versions

    def reconfigure(self, params: FraudParams) -> None:
        """After a restore: the configured champion rule (applied at the next evaluation)."""
        self.selection.params = params.champion

    def drain(self) -> tuple[list[tuple[float, str, tuple[ModelFigures, ...]]], list[Change]]:
        """The evaluations and champion changes since the last call (a few a day of event time)."""
        evaluated, changes = self.evaluated, self.changes
        if evaluated or changes:
            self.evaluated, self.changes = [], []
        return evaluated, changes

    def anomaly_scores(self, rows: list[list[float]] | np.ndarray) -> list[float]:
        """Anomaly scores of a batch of transactions' profile features (rows in
        ``detectors.profile.FEATURES`` order), in stream order.

        The forest learns the rows, each only after it was scored (see ``detectors.anomaly``);
        nothing else in the detector depends on the forest, so the batch is scored ahead of
        ``assess_batch``, which takes each row's score.
        """
        if not len(rows):
            return []
        scores: list[float] = self.anomaly.score_learn(squash_rows(profile_matrix(rows)[:, _SQUASHED_COLUMNS])).tolist()
        return scores

    # -- ticks -----------------------------------------------------------------------------

    @property
    def next_change(self) -> float | None:
        """The event time at which the models next change: the next slice of the last tick's
        learning, or the current tick's end (None before the first event)."""
        lesson = self._lesson
        return lesson.due if lesson is not None else self.tick_end

    def advance(self, now: float) -> None:
        """Move the clock to event time ``now``: learn every slice due by then and, at each
        tick end crossed, take the tick's lesson (whose first slice is due at once)."""
        if self.tick_end is None:
            self.tick_end = self._tick_after(now)
            return
        while True:
            lesson = self._lesson
            if lesson is not None and (now >= lesson.due or now >= self.tick_end):
                self._learn_slice(lesson)
            elif now >= self.tick_end:
                self._lesson = self._take_lesson(self.tick_end)
                self.tick_end = self._tick_after(now)
            else:
                return

    def _tick_after(self, now: float) -> float:
        tick = self.params.model_tick_s
        return (math.floor(now / tick) + 1) * tick

    def _take_lesson(self, end: float) -> Lesson:
        """What the tick ending at ``end`` brought: its traffic, amounts and labels in arrival
        order, then the transactions whose label horizon passed by ``end`` (as legitimate)."""
        lesson = Lesson(end, self._traffic, self._categories, self._log_amounts, self._labels)
        self._traffic, self._categories, self._log_amounts, self._labels = [], [], [], []
        traffic, labels = lesson.traffic, lesson.labels
        rate = self.params.supervised.implicit_legit_sample
        threshold = int(rate * 2**32)
        for event_id, entry in self.pending.expire(end):
            # Only a deterministic sample of them trains the classifier, weighted up by the
            # inverse rate so probabilities stay calibrated; every one is a counterparty label.
            sampled = zlib.crc32(event_id.encode()) < threshold
            labels.append((entry, end, False, 1.0 / rate if sampled else 0.0))
        limit = self.params.tick_slice_items
        if limit and len(traffic) + len(labels) > limit:
            lesson.slices = -(-(len(traffic) + len(labels)) // limit)
            lesson.step = self.params.model_tick_s / lesson.slices
        return lesson

    def _learn_slice(self, lesson: Lesson) -> None:
        """The next slice of ``lesson``; after the last, the tick's end of the label windows,
        the challenger's training schedule and the champion's evaluation."""
        i, end = lesson.done, lesson.end
        lesson.done += 1
        try:
            self.counterparties.observe_transactions(lesson.part(lesson.traffic, i))
            categories = lesson.part(lesson.categories, i)
            if categories:
                self.norms.learn_batch(np.array(categories, dtype=np.int64),
                                       np.array(lesson.part(lesson.log_amounts, i)), end)
            labels = lesson.part(lesson.labels, i)
            if labels:
                self._learn(labels, end)
        except Exception:  # no one event is at fault: the models go on with what they learned
            log.exception("learning slice %d of %d of the model tick ending at %s failed; the rest of that slice "
                          "is not learned", i + 1, lesson.slices, end, extra={"step": "shared_scoring"})
        if lesson.done < lesson.slices:
            return
        self._lesson = None
        self.counterparties.expire(end)
        if self.trees is not None:
            try:
                self.trees.tick(end)
            except RuntimeError:  # the model in place goes on scoring; the next training may succeed
                log.exception("the gradient-boosted model's training failed", extra={"step": "shared_scoring"})
        selection = self.selection
        if selection.due(end):
            ready = {LINEAR: True, TREES: self.trees is not None and self.trees.ready}
            change = selection.evaluate(end, self.versions(), ready)
            self.evaluated.append((end, selection.champion, selection.figures))
            if change is not None:
                log.info("fraud champion %s -> %s (%s): %s", change.from_model, change.to_model, change.action,
                         change.reason)
                self.changes.append(change)

    def _learn(self, labels: list[tuple[Pending, float, bool, float]], end: float) -> None:
        """Labels (entry, known at, fraud, classifier weight) known by tick end ``end`` into
        every shared model, in order, and every model's score of them into the evaluation."""
        self.counterparties.observe_labels([(entry.counterparty_id, known_at, is_fraud, entry.t)
                                            for entry, known_at, is_fraud, _ in labels])
        frauds = np.array([is_fraud for _, _, is_fraud, _ in labels])
        self.rate_tables.learn_batch(np.array([entry.cells for entry, _, _, _ in labels]),
                                     np.array([known_at for _, known_at, _, _ in labels]), frauds.astype(np.float64))
        self.selection.observe(np.frombuffer(b"".join(e.scores for e, _, _, _ in labels)).reshape(len(labels), -1),
                               frauds)
        learned = [(entry, is_fraud, weight) for entry, _, is_fraud, weight in labels if weight > 0]
        if learned:
            vectors = np.frombuffer(b"".join(e.vector for e, _, _ in learned)).reshape(len(learned), -1)
            learned_frauds, weights = np.array([f for _, f, _ in learned]), np.array([w for _, _, w in learned])
            self.classifier.learn_batch(vectors, learned_frauds, weights)
            if self.trees is not None:
                self.trees.learn(vectors, learned_frauds, weights, end)

    # -- scoring ---------------------------------------------------------------------------

    def assess(self, txn_event_id: str, t: float, counterparty_id: str | None,
               features: list[float], hits: list[RuleHit], anomaly_score: float) -> Assessment:
        """Score one transaction (score before learn); see ``assess_batch``."""
        txn = Transaction(txn_event_id, t, counterparty_id, hits, anomaly_score)
        result = self.assess_batch([txn], profile_matrix([features]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    def assess_batch(self, rows: list[Transaction], profile: np.ndarray) -> list[Assessment | ValueError]:
        """Score transactions of one model tick at once (score before learn), given their
        profile features (``profile_matrix``): each one's ``Assessment``, or the ``ValueError``
        that refuses it (features not all finite). Their counterparties' traffic is learned at
        the tick's end."""
        n = len(rows)
        if not n:
            return []
        p, clf = self.params, self.classifier
        t = np.array([row.t for row in rows])
        cps = [row.counterparty_id for row in rows]
        category = np.array([bucket(row.category, CATEGORY_BUCKETS) for row in rows], dtype=np.int64)
        channel = np.array([bucket(row.channel, CHANNEL_BUCKETS) for row in rows], dtype=np.int64)
        log_amount = profile[:, _LOG_AMOUNT_COLUMN]
        x = np.hstack([profile, self.counterparties.features_batch(cps, t),
                       np.array([row.anomaly for row in rows])[:, None],
                       self.norms.z_batch(category, log_amount, float(t[0]))[:, None]])
        self._categories.extend(category.tolist())
        self._log_amounts.extend(log_amount.tolist())
        cells = risk_cells_batch(x, category, channel)
        flags = np.zeros((n, len(RULE_CODES)))
        priors = []
        for i, row in enumerate(rows):
            not_hit = 1.0 - p.anomaly_weight * row.anomaly
            for hit in row.hits:
                flags[i, _RULE_INDEX[hit.code]] = 1.0
                not_hit *= 1.0 - hit.weight
            priors.append(1.0 - not_hit)
        vectors = np.hstack([x, self.rate_tables.log_odds_batch(cells, t), flags])
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            vectors[~finite] = 0.0  # refused below; kept out of the arithmetic
        model = clf.predict_proba_batch(vectors) if clf.n_frauds else np.zeros(n)
        trust = clf.n_frauds / (clf.n_frauds + p.warmup_frauds)
        prior = np.array(priors)
        linear = np.clip(trust * model + (1.0 - trust) * prior, 0.0, 1.0)
        trees = self.trees if self.trees is not None and self.trees.ready else None
        # Every model's score; the gradient-boosted one scores like the linear one until its first training.
        by_model = np.round(np.column_stack([linear, trees.predict(vectors)] if trees is not None else
                                            [linear] * len(self.models)), 6)
        champion = self.models.index(self.selection.champion)
        scores = by_model[:, champion].tolist()
        verdicts = [self._alert(score, row.hits) for score, row in zip(scores, rows, strict=True)]
        contributions: dict[int, list[float]] = {}
        if champion and trees is not None:  # the trees' reasons: TreeSHAP of the alerted rows, at once
            alerted = [i for i, (alert_type, _) in enumerate(verdicts) if alert_type is not None and finite[i]]
            if alerted:
                contributions = dict(zip(alerted, trees.contributions(vectors[alerted])[:, :-1].tolist(), strict=True))
        version, traffic, pending = self.model_version, self._traffic, self.pending
        out: list[Assessment | ValueError] = []
        for i, (row, score, model_score, prior_score, anomaly, ok, row_cells, row_scores) in enumerate(zip(
                rows, scores, np.round(model, 6).tolist(), np.round(prior, 6).tolist(),
                np.round(x[:, _ANOMALY_COLUMN], 6).tolist(), finite.tolist(), cells.tolist(), by_model.tolist(),
                strict=True)):
            if not ok:
                out.append(ValueError("a transaction whose features are not all finite"))
                continue
            alert_type, severity = verdicts[i]
            reasons = (self._reasons(vectors[i], row.hits, trust, row.anomaly, contributions.get(i))
                       if alert_type else ())
            # Learn only after scoring: the transaction must not explain itself.
            traffic.append((row.counterparty_id, row.t))
            entry = Pending(row.t, row.counterparty_id, vectors[i].tobytes(), tuple(row_cells), score,
                            by_model[i].tobytes())
            for _overflow in pending.add(row.event_id, entry):
                self.dropped_pending += 1
            out.append(Assessment(score, model_score, prior_score, anomaly, alert_type, severity, reasons, version,
                                  tuple(row_scores)))
        return out

    def _alert(self, score: float, hits: list[RuleHit]) -> tuple[AlertType | None, Severity]:
        p = self.params
        if not hits and score < p.alert_threshold:  # the common case
            return None, "low"
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

    def _reasons(self, vector: np.ndarray, hits: list[RuleHit], trust: float,
                 anomaly_score: float, contributions: list[float] | None = None) -> tuple[Reason, ...]:
        """The rules hit, then the features that pushed the champion's score up most: the
        linear model's weighted by its trust, or the trees' ``contributions`` (TreeSHAP)."""
        reasons = [Reason(h.code, h.text, h.value, round(h.weight, 4), h.args) for h in hits]
        if contributions is not None:
            top = sorted(zip(MODEL_FEATURES, contributions, strict=True), key=lambda item: (-item[1], item[0]))[:3]
            for name, contribution in top:
                if contribution > 0:
                    reasons.append(_feature_reason(name, round(float(vector[_MODEL_INDEX[name]]), 4),
                                                   round(contribution, 4)))
            return tuple(reasons)
        if trust > 0:
            for name, contribution in self.classifier.explain(vector):
                reasons.append(_feature_reason(name, round(float(vector[_MODEL_INDEX[name]]), 4),
                                               round(contribution * trust, 4)))
        if anomaly_score >= 0.5:
            reasons.append(Reason.of("anomaly", round(anomaly_score, 4),
                                     round(self.params.anomaly_weight * anomaly_score * (1 - trust), 4)))
        return tuple(reasons)

    def observe_label(self, ref_event_id: str, known_at: float, is_fraud: bool) -> float | None:
        """A label for a scored transaction, learned at the tick's end; the fraud_score the
        transaction was given, or None if it is not (or no longer) known."""
        entry = self.pending.pop(ref_event_id)
        if entry is None:
            self.unmatched_labels += 1
            return None
        self._labels.append((entry, known_at, is_fraud, 1.0))
        return entry.score
