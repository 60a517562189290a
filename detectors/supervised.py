"""Online supervised fraud model that learns from delayed ``fraud`` / ``legit`` feedback.

Two pieces:

- ``DelayedLabels`` remembers, for every scored transaction, the exact feature vector it
  was scored with, until its label arrives (or until ``implicit_legit_after`` passes with no
  fraud report, when it is taken as legitimate, as a chargeback window closes). Learning
  from the vector *as scored* avoids training/serving skew and label leakage.
- ``FraudClassifier`` is River's logistic regression on standardised features, over numpy
  vectors. Its ``explain`` gives each feature's contribution to the logit, the "why" of a
  score.

>>> clf = FraudClassifier(("a", "b"), SupervisedParams(learning_rate=0.1))
>>> for i in range(300):
...     clf.learn_one(clf.vector({"a": float(i % 2), "b": 0.5}), bool(i % 2))
>>> odd, even = clf.vector({"a": 1.0, "b": 0.5}), clf.vector({"a": 0.0, "b": 0.5})
>>> clf.predict_proba_one(odd) > 0.8 > 0.2 > clf.predict_proba_one(even)
True
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import numpy as np

from schemas.snapshots import restore_fields


@dataclass(frozen=True, slots=True)
class SupervisedParams:
    """Learning rate, regularisation and the label horizon of the supervised model."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.01
    l2: float = 1e-5
    prior_rate: float = 0.01  # the intercept starts at this fraud rate
    clip: float = 5.0  # standardised features are clipped to [-clip, clip]
    fraud_weight: float = 1.0  # loss weight of a fraud label relative to a legit one
    implicit_legit_after_days: float = 14.0  # 0 disables implicit legit labels
    implicit_legit_sample: float = 0.25  # share of implicit legit labels the classifier learns
    max_pending: int = 2_000_000

    __setstate__ = restore_fields


class FraudClassifier:
    """Standardise (running mean and variance, clipped), then logistic regression by SGD (or
    Adam), one labelled vector at a time.

    The model is River's ``linear_model.LogisticRegression`` (log loss with the fraud labels
    weighted ``fraud_weight``, L2 on the weights, an intercept with its own learning rate,
    gradients clamped), written over numpy vectors instead of dicts: River's dict-based
    ``learn_one`` costs several times more per label than the arithmetic it does, and every
    labelled transaction passes here. ``tests/test_detectors.py`` checks the weights against
    River's own model, label by label.

    Works on feature vectors in ``feature_names`` order (``vector(x)``), the form in which
    scored transactions wait for their labels. Standardised values are clipped to
    ``[-clip, clip]`` so that a rare feature's first non-zero value cannot throw the SGD
    step far off.
    """

    CLIP_GRADIENT: Final = 1e12  # River's default

    def __init__(self, feature_names: tuple[str, ...], params: SupervisedParams | None = None) -> None:
        self.params = params or SupervisedParams()
        self.feature_names = feature_names
        p = self.params
        n = len(feature_names)
        self.weights = np.zeros(n)
        # Fraud is rare: starting from p = 0.5 would spend the first labels on the intercept.
        self.intercept = math.log(p.prior_rate / (1.0 - p.prior_rate))
        self._adam = (np.zeros(n), np.zeros(n)) if p.optimizer == "adam" else None
        self.n_labels = 0
        self.n_frauds = 0
        self._mean = np.zeros(n)
        self._m2 = np.zeros(n)
        self._inv_std = np.ones(n)  # refreshed on learning, reused to score
        self._folded: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None  # see _linear

    def vector(self, x: dict[str, float]) -> array[float]:
        """``x`` as a compact array in ``feature_names`` order (8 bytes a feature)."""
        return array("d", [x.get(name, 0.0) for name in self.feature_names])

    def _standardised(self, v: array[float] | np.ndarray) -> np.ndarray:
        x = v if isinstance(v, np.ndarray) else np.frombuffer(v)
        z = (x - self._mean) * self._inv_std
        clip = self.params.clip
        np.minimum(z, clip, out=z)  # np.clip is several times slower on small arrays
        np.maximum(z, -clip, out=z)
        return z

    def _linear(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The model folded into the raw feature space, refreshed after learning.

        With ``z = clip((v - mean) * inv_std, -c, c)`` and ``logit = w . z + b``, and
        ``inv_std > 0``: ``logit = clip(v, mean - c / inv_std, mean + c / inv_std) . a + k``
        where ``a = w * inv_std`` and ``k = b - mean . a``: one clip and one dot per score.
        """
        if self._folded is None:
            a = self.weights * self._inv_std
            half = self.params.clip / self._inv_std
            self._folded = (self._mean - half, self._mean + half, a, float(self.intercept - self._mean @ a))
        return self._folded

    def predict_proba_one(self, v: array[float]) -> float:
        """Probability that the transaction with feature vector ``v`` is fraud."""
        low, high, a, k = self._linear()
        x = np.frombuffer(v)
        logit = float(np.minimum(np.maximum(x, low), high) @ a) + k
        return 1.0 / (1.0 + math.exp(-logit)) if logit > -700.0 else 0.0

    def explain(self, v: array[float] | np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed the score up most, with their contribution to the logit."""
        contributions = list(zip(self.feature_names, (self.weights * self._standardised(v)).tolist(), strict=True))
        contributions.sort(key=lambda item: (-item[1], item[0]))
        return [(name, c) for name, c in contributions[:top] if c > 0]

    def learn_one(self, v: array[float], is_fraud: bool, weight: float = 1.0) -> None:
        """Update the running statistics, then take one weighted gradient step."""
        self.learn_batch(np.frombuffer(v)[None, :], np.array([is_fraud]), np.array([weight]))

    def predict_proba_batch(self, v: np.ndarray) -> np.ndarray:
        """``predict_proba_one`` for every row of ``v`` (rows, features)."""
        low, high, a, k = self._linear()
        logit = np.minimum(np.maximum(v, low), high) @ a + k
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -500.0, 500.0)))

    def learn_batch(self, v: np.ndarray, is_fraud: np.ndarray, weight: np.ndarray) -> None:
        """Learn the labelled rows of ``v`` in order: the running statistics take the whole
        batch at once (Chan's parallel update, the same as row by row), then every row is
        standardised by them and takes its gradient step, as ``learn_one`` would.

        The steps stay one row at a time (each moves the weights the next one is computed
        with); the L2 shrinkage is kept as a scale factor of the weights, so that a step is a
        dot product and one scaled add.
        """
        k = len(v)
        if not k:
            return
        n0, n = self.n_labels, self.n_labels + k
        batch_mean = v.mean(axis=0)
        delta = batch_mean - self._mean
        self._m2 += ((v - batch_mean) ** 2).sum(axis=0) + delta * delta * (n0 * k / n)
        self._mean += delta * (k / n)
        self.n_labels, self.n_frauds = n, self.n_frauds + int(is_fraud.sum())
        self._inv_std = 1.0 / (np.sqrt(self._m2 / n) + 1e-6)
        clip = self.params.clip
        z = np.clip((v - self._mean) * self._inv_std, -clip, clip)
        p = self.params
        lr, l2, fraud_weight, cap = p.learning_rate, p.l2, p.fraud_weight, self.CLIP_GRADIENT
        if self._adam is not None:  # Adam keeps per-weight moments: row by row, as learn_one
            for row, fraud, w in zip(z, is_fraud.tolist(), weight.tolist(), strict=True):
                self._step(row, fraud, w, n0 := n0 + 1)
            self._folded = None
            return
        scale, u, b = 1.0, self.weights.copy(), self.intercept
        shrink = 1.0 - lr * l2
        exp = math.exp
        for row, fraud, w in zip(z, is_fraud.tolist(), weight.tolist(), strict=True):
            y, class_weight = (1.0, fraud_weight) if fraud else (-1.0, 1.0)
            margin = (scale * float(row @ u) + b) * y
            if margin > 18.0:
                gradient = class_weight * exp(-margin) * -y
            elif margin < -18.0:
                gradient = class_weight * -y
            else:
                gradient = class_weight * -y / (exp(margin) + 1.0)
            gradient = min(max(gradient * w, -cap), cap)
            b -= lr * gradient
            scale *= shrink
            u -= (lr * gradient / scale) * row
            if scale < 1e-6:
                u *= scale
                scale = 1.0
        self.weights, self.intercept = u * scale, b
        self._folded = None

    def _step(self, z: np.ndarray, is_fraud: bool, weight: float, t: int) -> None:
        """One Adam step on the standardised row ``z`` (the ``t``-th label)."""
        p = self.params
        y, class_weight = (1.0, p.fraud_weight) if is_fraud else (-1.0, 1.0)
        margin = (float(self.weights @ z) + self.intercept) * y
        if margin > 18.0:
            gradient = class_weight * math.exp(-margin) * -y
        elif margin < -18.0:
            gradient = class_weight * -y
        else:
            gradient = class_weight * -y / (math.exp(margin) + 1.0)
        gradient = min(max(gradient * weight, -self.CLIP_GRADIENT), self.CLIP_GRADIENT)
        self.intercept -= p.learning_rate * gradient
        step = gradient * z + p.l2 * self.weights
        assert self._adam is not None
        m, s = self._adam
        m *= 0.9
        m += 0.1 * step
        s *= 0.999
        s += 0.001 * step * step
        rate = p.learning_rate * (1.0 - 0.999**t) ** 0.5 / (1.0 - 0.9**t)
        self.weights -= rate * m / (np.sqrt(s) + 1e-8)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_folded": None}  # derived


class Pending(NamedTuple):
    """A scored transaction waiting for its label."""

    t: float
    counterparty_id: str | None
    vector: bytes  # the model vector it was scored with (float64, MODEL_FEATURES order)
    cells: tuple[int, ...]  # its cells in the rate tables (detectors.risk_tables.TABLES)
    score: float  # the fraud_score it was given
    scores: bytes  # every model's score of it (float64, ``FraudDetector.models`` order)


class DelayedLabels:
    """Feature vectors of scored transactions, by event id, oldest first."""

    def __init__(self, params: SupervisedParams | None = None) -> None:
        self.params = params or SupervisedParams()
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._due = float("-inf")  # nothing expires before this event time

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
        if horizon <= 0 or now < self._due:
            return
        pending = self._pending
        while pending:
            event_id, entry = next(iter(pending.items()))
            if now - entry.t < horizon:
                # Labels may remove the oldest entry later; then this is merely early.
                self._due = entry.t + horizon
                return
            del pending[event_id]
            yield event_id, entry
