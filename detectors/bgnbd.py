"""BG/NBD (Fader, Hardie and Lee 2005, "Counting your customers the easy way"): the
population model behind the churn score's priors, fitted by maximum likelihood.

Time is in whatever unit the inputs use (the churn detector uses days; the benchmark on
CDNOW uses weeks, as the paper does). Used by ``detectors.churn`` to fit the priors to a
replayed history and by ``bench.churn_holdout`` as the baseline.

The fit is bounded in its parameters and in its time, whatever the data:

- Parameters: r, a and b within :data:`SHAPE_BOUNDS`, alpha within :data:`ALPHA_SPAN_BOUNDS`
  times the history span (the oldest customer's age T). Unbounded, the maximum likelihood runs
  away on data the model only reaches in a limit: customers active at one steady rate (card
  payments) send r and alpha to infinity with r / alpha fixed (the Poisson limit), one
  drop-out probability for everyone sends a and b to infinity with a / (a + b) fixed, and a
  history with no repeat purchase sends the rates to zero. At r = 1,000 the rates vary by
  3 % (a Gamma's coefficient of variation is 1 / sqrt(r)): that is the Poisson limit in
  finite numbers, the mean rate r / alpha still fitted; likewise with b at its bound the mean
  drop-out probability a / (a + b) is still fitted. :attr:`BGNBD.at_upper` and
  :attr:`BGNBD.at_lower` say which parameters stopped at a bound.
- Time: customers with the same (x, t_x, T) are counted once, with a weight, and beyond
  :data:`MAX_RHYTHMS` distinct ones the fit uses a systematic sample of the customers in
  (x, t_x, T) order (deterministic, whatever the input order); SLSQP on the log-parameters
  with the analytic gradient, stopped after :data:`MAX_EVALUATIONS` evaluations.
- Numbers: the log-likelihood is computed in log space (``gammaln``, ``log1p``,
  ``logaddexp``), with time in units of the history span, so nothing overflows.

Ten customers buying every other day for 40 days, none gone: the Poisson limit (r at its
bound, the rate r / alpha fitted) and nobody dropping out (a at its lower bound, b at its upper)

>>> steady = fit_bgnbd(np.full(10, 20.0), np.full(10, 40.0), np.full(10, 40.0))
>>> steady.r, round(steady.r / steady.alpha, 3), steady.at_upper, steady.at_lower
(1000.0, 0.5, ('r', 'b'), ('a',))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

FloatArray = npt.NDArray[np.float64]

#: Bounds of r, a and b.
SHAPE_BOUNDS: Final = (1e-3, 1e3)
#: Bounds of alpha in units of the history span: with r at its upper bound, the upper one still
#: allows a mean rate of a tenth of a purchase per history span.
ALPHA_SPAN_BOUNDS: Final = (1e-3, 1e4)
#: At most this many distinct (x, t_x, T) rhythms are fitted (a sample of the customers beyond).
MAX_RHYTHMS: Final = 20_000
#: At most this many evaluations of the log-likelihood and its gradient.
MAX_EVALUATIONS: Final = 300
PARAMETERS: Final = ("r", "alpha", "a", "b")


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters (``alpha`` in the inputs' time unit), with how the fit ended:
    the parameters that stopped at their lower or upper bound (``PARAMETERS`` names; r at its
    upper bound is the Poisson limit), whether the optimiser converged, the evaluations it
    took, the customers it was fitted to and their distinct rhythms (a sample's, beyond
    ``max_rhythms``)."""

    r: float
    alpha: float
    a: float
    b: float
    at_lower: tuple[str, ...] = ()
    at_upper: tuple[str, ...] = ()
    converged: bool = True
    evaluations: int = 0
    customers: int = 0
    rhythms: int = 0  # distinct (x, t_x, T) fitted

    def expected(self, horizon: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``horizon`` given (x, t_x, T) (FHL 2005, eq. 10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = horizon / (alpha + T + horizon)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        first = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ((alpha + T) / (alpha + T + horizon)) ** (r + x) * hyp)
        odds = np.where(x > 0, a / np.maximum(b + x - 1.0, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
        return first / (1.0 + odds)


@dataclass(frozen=True)
class _Rhythms:
    """Distinct (x, t_x, T) with the number of customers of each; time in units of ``span``."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    x_values: FloatArray  # the distinct x, and each row's index into them
    x_index: npt.NDArray[np.intp]
    span: float
    customers: int


def _rhythms(x: FloatArray, t_x: FloatArray, T: FloatArray, max_rhythms: int, span: float | None) -> _Rhythms:
    """The customers' rhythms counted once each; a systematic sample of the customers in
    (x, t_x, T) order when there are more than ``max_rhythms`` distinct ones."""
    n = len(x)
    order = np.lexsort((T, t_x, x))
    rows = np.column_stack((x[order], t_x[order], T[order]))
    new = np.ones(n, dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    distinct, counts = rows[starts], np.diff(np.append(starts, n))
    if len(distinct) > max_rhythms:
        # Every (n / max_rhythms)-th customer in that order: deterministic, stratified on
        # x, t_x and T, and at most max_rhythms customers, so as many distinct rhythms.
        picks = ((np.arange(max_rhythms) + 0.5) * n / max_rhythms).astype(np.int64)
        counts = np.bincount(np.searchsorted(starts, picks, side="right") - 1, minlength=len(distinct))
        distinct, counts = distinct[counts > 0], counts[counts > 0]
    if span is None:
        oldest = float(distinct[:, 2].max())
        span = oldest if oldest > 0 else 1.0
    x_values, x_index = np.unique(distinct[:, 0], return_inverse=True)
    return _Rhythms(distinct[:, 0], distinct[:, 1] / span, distinct[:, 2] / span, counts.astype(float),
                    x_values, x_index, span, n)


def _loglik(params: FloatArray, h: _Rhythms) -> tuple[float, FloatArray]:
    """Total log-likelihood of BG/NBD (FHL 2005, eq. 6) at log-parameters ``params`` (alpha in
    units of ``h.span``) and its gradient in them.

    Per customer, with u = log(1 + T / alpha) and v = log(1 + t_x / alpha)::

        l = ln G(r + x) - ln G(r) - r u - x ln(alpha + T) + ln B(a, b + x) - ln B(a, b) + log(1 + e^d)
        d = ln a - ln(b + x - 1) + (r + x) (u - v)            (x > 0; the drop-out branch)

    where e^d are the odds that the customer left after the last purchase (the churn
    detector's ``P(alive) = 1 / (1 + e^d)``).
    """
    r, alpha, a, b = np.exp(params)
    xv = h.x_values
    # Functions of x alone, on the distinct x (a few hundred at most), then per rhythm.
    by_x = np.array([
        special.gammaln(r + xv) - special.gammaln(r) + special.gammaln(b + xv) - special.gammaln(b)
        - special.gammaln(a + b + xv) + special.gammaln(a + b),
        special.digamma(r + xv) - special.digamma(r),
        special.digamma(a + b) - special.digamma(a + b + xv),
        special.digamma(b + xv) - special.digamma(b),
    ])[:, h.x_index]
    x, t_x, T, w = h.x, h.t_x, h.T, h.weight
    u, v = np.log1p(T / alpha), np.log1p(t_x / alpha)
    repeat = x > 0
    b_x1 = b + np.where(repeat, x - 1.0, 1.0)  # b + x - 1, kept positive where unused
    d = np.log(a) - np.log(b_x1) + (r + x) * (u - v)
    dropped = np.where(repeat, special.expit(d), 0.0)  # P(left after the last purchase)
    ll = by_x[0] - r * u - x * (np.log(alpha) + u) + np.where(repeat, np.logaddexp(0.0, d), 0.0)
    at_T, at_t_x = T / (alpha + T), t_x / (alpha + t_x)  # alpha d(u)/d(alpha) and d(v), negated
    gradient = np.array([
        r * (by_x[1] - u + dropped * (u - v)),
        r * at_T - x * (1.0 - at_T) + dropped * (r + x) * (at_t_x - at_T),
        a * (by_x[2] + dropped / a),
        b * (by_x[3] + by_x[2] - dropped / b_x1),
    ])
    # Sums, not dot products: BLAS would start threads for a few thousand numbers.
    return float((w * ll).sum()), (gradient * w).sum(axis=1)


def bgnbd_loglik(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> float:
    """Log-likelihood of BG/NBD at log-parameters ``params`` (FHL 2005, eq. 6).

    >>> x, t_x, T = np.array([0.0, 3.0]), np.array([0.0, 20.0]), np.array([30.0, 30.0])
    >>> round(bgnbd_loglik(np.log([0.5, 5.0, 0.8, 2.5]), x, t_x, T), 4)
    -12.1748
    """
    h = _rhythms(np.asarray(x, dtype=float), np.asarray(t_x, dtype=float), np.asarray(T, dtype=float),
                 len(x) or 1, span=1.0)
    return _loglik(np.asarray(params, dtype=float), h)[0]


class _OutOfBudget(Exception):
    """The fit used up its evaluations."""


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
              start: Sequence[float] = (0.5, 5.0, 0.8, 2.5), ftol: float = 1e-12,
              max_rhythms: int = MAX_RHYTHMS, max_evaluations: int = MAX_EVALUATIONS) -> BGNBD:
    """Maximum-likelihood BG/NBD parameters (r, alpha, a, b) for repeat counts ``x``, recency
    ``t_x`` and age ``T``, within the bounds (the module's docstring), searched from ``start``
    on at most ``max_rhythms`` distinct rhythms: SLSQP on the log-parameters with the
    analytic gradient, to ``ftol`` on the mean log-likelihood per customer, stopped at the
    best point so far after ``max_evaluations`` evaluations. No customers: ``start``."""
    if len(x) == 0:
        r, alpha, a, b = (float(v) for v in start)
        return BGNBD(r, alpha, a, b)
    h = _rhythms(np.asarray(x, dtype=float), np.asarray(t_x, dtype=float), np.asarray(T, dtype=float),
                 max_rhythms, span=None)
    (shape_low, shape_high), (alpha_low, alpha_high) = SHAPE_BOUNDS, ALPHA_SPAN_BOUNDS
    low = np.array([shape_low, alpha_low, shape_low, shape_low])  # r, alpha / span, a, b
    high = np.array([shape_high, alpha_high, shape_high, shape_high])
    lower, upper = np.log(low), np.log(high)
    r0, alpha0, a0, b0 = start
    theta0 = np.log(np.clip([r0, alpha0 / h.span, a0, b0], low, high))
    total = float(h.weight.sum())
    evaluations, best_value, best_theta = 0, math.inf, theta0

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        nonlocal evaluations, best_value, best_theta
        if evaluations == max_evaluations:
            raise _OutOfBudget
        evaluations += 1
        theta = np.clip(theta, lower, upper)
        ll, gradient = _loglik(theta, h)
        if -ll / total < best_value:
            best_value, best_theta = -ll / total, theta
        return -ll / total, -gradient / total

    try:
        # SLSQP: a quasi-Newton method with bounds like L-BFGS-B, without the BLAS threads that
        # make each L-BFGS-B step cost milliseconds on a busy machine.
        result = optimize.minimize(objective, theta0, jac=True, method="SLSQP",
                                   bounds=list(zip(lower, upper, strict=True)),
                                   options={"maxiter": max_evaluations, "ftol": ftol})
        converged = bool(result.success)
    except _OutOfBudget:
        converged = False
    theta = best_theta  # the best point evaluated: the optimum, or where the budget ran out
    at_lower, at_upper = theta - lower < 1e-3, upper - theta < 1e-3  # within 0.1 %: held at the bound
    r, alpha, a, b = np.where(at_lower, low, np.where(at_upper, high, np.exp(theta)))
    return BGNBD(float(r), float(alpha * h.span), float(a), float(b),
                 tuple(name for name, at in zip(PARAMETERS, at_lower, strict=True) if at),
                 tuple(name for name, at in zip(PARAMETERS, at_upper, strict=True) if at),
                 converged, evaluations, h.customers, len(h.x))
