"""BG/NBD (Fader, Hardie and Lee 2005, "Counting your customers the easy way"): the
population model behind the churn score's priors, fitted by maximum likelihood.

Time is in whatever unit the inputs use (the churn detector uses days; the benchmark on
CDNOW uses weeks, as the paper does). Used by ``detectors.churn`` to fit the priors to a
replayed history and by ``bench.churn_holdout`` as the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters (``alpha`` in the inputs' time unit)."""

    r: float
    alpha: float
    a: float
    b: float

    def expected(self, horizon: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``horizon`` given (x, t_x, T) (FHL 2005, eq. 10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = horizon / (alpha + T + horizon)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        first = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ((alpha + T) / (alpha + T + horizon)) ** (r + x) * hyp)
        odds = np.where(x > 0, a / np.maximum(b + x - 1.0, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
        return first / (1.0 + odds)


def bgnbd_loglik(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> float:
    """Log-likelihood of BG/NBD at log-parameters ``params`` (FHL 2005, eq. 6)."""
    r, alpha, a, b = np.exp(params)
    common = special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha)
    alive = special.betaln(a, b + x) - special.betaln(a, b) - (r + x) * np.log(alpha + T)
    dropped = (special.betaln(a + 1.0, np.maximum(b + x - 1.0, 1e-12)) - special.betaln(a, b)
               - (r + x) * np.log(alpha + t_x))
    dropped = np.where(x > 0, dropped, -np.inf)
    return float(np.sum(common + np.logaddexp(alive, dropped)))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
              start: Sequence[float] = (0.5, 5.0, 0.8, 2.5), xatol: float = 1e-6,
              fatol: float = 1e-8) -> BGNBD:
    """Maximum-likelihood BG/NBD parameters (r, alpha, a, b) for repeat counts ``x``, recency
    ``t_x`` and age ``T``, searched from ``start`` (Nelder-Mead on the log-parameters, to
    ``xatol`` on them and ``fatol`` on the log-likelihood)."""
    result = optimize.minimize(lambda p: -bgnbd_loglik(p, x, t_x, T), np.log(np.asarray(start, dtype=float)),
                               method="Nelder-Mead", options={"maxiter": 4000, "xatol": xatol,
                                                              "fatol": fatol})
    r, alpha, a, b = np.exp(result.x)
    return BGNBD(float(r), float(alpha), float(a), float(b))
