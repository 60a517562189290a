"""Online supervised fraud model that learns from delayed ``fraud`` / ``legit`` feedback.

Two pieces:

- ``DelayedLabels`` remembers, for every scored transaction, the exact feature vector it
  was scored with, until its label arrives (or until ``implicit_legit_after`` passes with no
  fraud report, when it is taken as legitimate, as a chargeback window closes). Learning
  from the vector *as scored* avoids training/serving skew and label leakage.
- ``FraudClassifier`` is a River logistic regression on standardised features. Its
  ``explain`` gives each feature's contribution to the logit, the "why" of a score.

>>> clf = FraudClassifier(FEATURE_NAMES := ("a", "b"))
>>> for i in range(200):
...     clf.learn_one({"a": float(i % 2), "b": 0.5}, bool(i % 2))
>>> clf.predict_proba_one({"a": 1.0, "b": 0.5}) > 0.8 > clf.predict_proba_one({"a": 0.0, "b": 0.5})
True
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from river import linear_model, optim, preprocessing


@dataclass(frozen=True, slots=True)
class SupervisedParams:
    """Learning rate, regularisation and the label horizon of the supervised model."""

    learning_rate: float = 0.05
    l2: float = 1e-5
    fraud_weight: float = 1.0  # loss weight of a fraud label relative to a legit one
    implicit_legit_after_days: float = 14.0  # 0 disables implicit legit labels
    implicit_legit_sample: float = 0.25  # share of implicit legit labels the classifier learns
    max_pending: int = 2_000_000


class FraudClassifier:
    """Standardise, then logistic regression; probability of fraud in [0, 1]."""

    def __init__(self, feature_names: tuple[str, ...], params: SupervisedParams | None = None) -> None:
        self.params = params or SupervisedParams()
        self.feature_names = feature_names
        self.scaler = preprocessing.StandardScaler()
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(self.params.learning_rate),
            loss=optim.losses.Log(weight_pos=self.params.fraud_weight),
            l2=self.params.l2,
        )
        self.n_labels = 0
        self.n_frauds = 0

    def _standardise(self, x: dict[str, float]) -> dict[str, float]:
        if not self.n_labels:
            return x
        return self.scaler.transform_one(x)

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Probability that ``x`` is fraud; 0.5-free prior (the intercept) before any label."""
        return float(self.model.predict_proba_one(self._standardise(x)).get(True, 0.0))

    def explain(self, x: dict[str, float], top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed the score up most, with their contribution to the logit."""
        weights = self.model.weights
        scaled = self._standardise(x)
        contributions = [(name, weights.get(name, 0.0) * value) for name, value in scaled.items()]
        contributions.sort(key=lambda item: (-item[1], item[0]))
        return [(name, c) for name, c in contributions[:top] if c > 0]

    def learn_one(self, x: dict[str, float], is_fraud: bool, weight: float = 1.0) -> None:
        self.scaler.learn_one(x)
        self.model.learn_one(self.scaler.transform_one(x), is_fraud, weight)
        self.n_labels += 1
        self.n_frauds += is_fraud

    def vector(self, x: dict[str, float]) -> array[float]:
        """``x`` as a compact array in ``feature_names`` order (8 bytes a feature)."""
        return array("d", [x.get(name, 0.0) for name in self.feature_names])

    def from_vector(self, v: array[float]) -> dict[str, float]:
        return dict(zip(self.feature_names, v, strict=True))


class Pending(NamedTuple):
    """A scored transaction waiting for its label."""

    t: float
    counterparty_id: str | None
    vector: array[float]


class DelayedLabels:
    """Feature vectors of scored transactions, by event id, oldest first."""

    def __init__(self, params: SupervisedParams | None = None) -> None:
        self.params = params or SupervisedParams()
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, event_id: str, entry: Pending) -> Iterator[tuple[str, Pending]]:
        """Remember ``entry``; yield what overflows ``max_pending`` (oldest first)."""
        self._pending[event_id] = entry
        while len(self._pending) > self.params.max_pending:
            yield self._pending.popitem(last=False)

    def pop(self, event_id: str) -> Pending | None:
        """The entry of a labelled transaction, forgotten from now on."""
        return self._pending.pop(event_id, None)

    def expire(self, now: float) -> Iterator[tuple[str, Pending]]:
        """Entries whose label horizon has passed by event time ``now``, oldest first."""
        horizon = self.params.implicit_legit_after_days * 86400.0
        if horizon <= 0:
            return
        pending = self._pending
        while pending:
            event_id, entry = next(iter(pending.items()))
            if now - entry.t < horizon:
                return
            del pending[event_id]
            yield event_id, entry
