"""Latent product preferences: how likely a simulated customer is to take a next-best action.

The engine never sees these; they decide how a simulated customer answers a prompt
(``simulator.responder``), so a policy can only learn them from the answers. The model:

- a **taste** per action category (a shift of the log-odds of converting), drawn once per
  customer around their segment's (``SEGMENT_TASTE``): mass customers lean to deposits and
  away from alternatives and research, affluent ones to wealth management, bonds and funds,
  private ones to alternatives, equity, their RM's call and research; each customer departs
  from their segment by ``NOISE`` per category, which no profile field explains;
- the **moment** shifts it (``TRIGGER_TASTE``): a maturity makes a reminder and a reinvestment
  welcome, rising churn risk makes a call the thing to do and products unwelcome, a large
  credit makes deposits and wealth products welcome, a login after a long absence favours
  research and a call over a sale;
- the **product just viewed**: an offer in its category is more welcome (``VIEWED_MATCH``);
- **risk fit**: a product's risk far from the customer's own grade is less welcome, by
  ``RISK_DISTANCE`` per grade (the contact rules forbid only products *above* the grade;
  customers also shy away from products far below what they are used to).

The conversion probability is the logistic of ``BASE_LOGIT`` plus those shifts: most prompts
do not convert. Tastes come from their own generator, seeded by the simulation's seed and the
customer's index (``draw_tastes``), never from the simulation's own generator, so adding them
changed no other draw of the simulator: the same seed gives the same stream as before.

>>> tastes = draw_tastes(7, 3, "mass")
>>> len(tastes) == len(TASTE_CATEGORIES), tastes == draw_tastes(7, 3, "mass")
(True, True)
>>> deposit = _Act("product", "deposit", 1)
>>> round(conversion_probability((0.0,) * len(TASTE_CATEGORIES), 1, deposit, "product_view", None), 4)
0.0474
>>> calm = conversion_probability(tastes, 1, deposit, "product_view", None)
>>> conversion_probability(tastes, 1, deposit, "large_credit", None) > calm  # a credit helps
True
>>> conversion_probability(tastes, 1, deposit, "product_view", "deposit") > calm  # just viewed
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

#: The action categories a customer has a taste for, in the order of ``Customer.tastes``
#: (the categories of ``config/actions.toml``); any other category has a taste of 0.
TASTE_CATEGORIES: Final = ("deposit", "wealth", "bond", "fund", "equity", "alternative",
                           "relationship", "research", "reminder")
_INDEX: Final = {category: i for i, category in enumerate(TASTE_CATEGORIES)}

#: Each segment's mean taste per category (log-odds shifts).
SEGMENT_TASTE: Final[dict[str, dict[str, float]]] = {
    "mass": {"deposit": 1.0, "wealth": 0.3, "bond": 0.0, "fund": -0.3, "equity": -0.8,
             "alternative": -2.0, "relationship": -0.5, "research": -1.5, "reminder": 0.0},
    "affluent": {"deposit": 0.0, "wealth": 0.8, "bond": 0.5, "fund": 0.5, "equity": 0.0,
                 "alternative": -1.0, "relationship": 0.0, "research": -0.3, "reminder": 0.0},
    "private": {"deposit": -1.0, "wealth": 0.3, "bond": 0.3, "fund": 0.2, "equity": 0.6,
                "alternative": 1.2, "relationship": 0.8, "research": 0.8, "reminder": 0.0},
}
PRODUCT_CATEGORIES: Final = ("deposit", "wealth", "bond", "fund", "equity", "alternative")
#: How each trigger moment shifts the taste for a category.
TRIGGER_TASTE: Final[dict[str, dict[str, float]]] = {
    "product_view": {},
    "large_credit": {"deposit": 0.6, "wealth": 0.8, "fund": 0.3},
    "maturity": {"reminder": 2.2, "deposit": 0.8, "wealth": 0.5},
    "churn_rising": {"relationship": 2.0, **{c: -1.0 for c in PRODUCT_CATEGORIES}},
    "login_after_absence": {"research": 0.8, "relationship": 0.6, **{c: -0.3 for c in PRODUCT_CATEGORIES}},
}
BASE_LOGIT: Final = -3.0
VIEWED_MATCH: Final = 1.5  # an offer in the category of the product just viewed
RISK_DISTANCE: Final = 0.35  # per grade between a product's risk and the customer's grade
NOISE: Final = 0.5  # the sd of a customer's taste around their segment's, per category


class ActionLike(Protocol):
    """What the model reads of an action of the catalogue (``detectors.nba.Action`` has it)."""

    @property
    def kind(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def risk(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Act:
    """A minimal action, for the examples."""

    kind: str
    category: str
    risk: int = 0


def draw_tastes(seed: int, index: int, segment: str) -> tuple[float, ...]:
    """Customer ``index``'s tastes, in ``TASTE_CATEGORIES`` order, from a generator of their own.

    An unknown segment is centred on 0 for every category.
    """
    rng = random.Random(f"tastes/{seed}/{index}")
    mean = SEGMENT_TASTE.get(segment, {})
    return tuple(round(mean.get(c, 0.0) + rng.gauss(0.0, NOISE), 6) for c in TASTE_CATEGORIES)


def conversion_probability(tastes: Sequence[float], risk_level: int | None, action: ActionLike,
                           trigger: str, viewed_category: str | None) -> float:
    """The chance that a customer with ``tastes`` and risk grade ``risk_level`` converts when
    offered ``action`` at a ``trigger`` moment, having just viewed a product of
    ``viewed_category`` (None: no product viewed, or a trigger about none)."""
    index = _INDEX.get(action.category)
    logit = BASE_LOGIT + (tastes[index] if index is not None else 0.0)
    logit += TRIGGER_TASTE.get(trigger, {}).get(action.category, 0.0)
    if viewed_category is not None and viewed_category == action.category:
        logit += VIEWED_MATCH
    if action.kind == "product" and risk_level is not None:
        logit -= RISK_DISTANCE * abs(action.risk - risk_level)
    return 1.0 / (1.0 + math.exp(-logit))
