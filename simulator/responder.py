"""How simulated customers answer next-best-action prompts: the other half of the closed loop.

``Responder.respond(prompt, customer, viewed_category)`` decides what the customer (and the RM
who put the prompt to them) answers, from the customer's latent tastes
(``simulator.preferences``): with ``p`` the chance that the customer takes the action and
``u`` one uniform draw,

- ``u < p``: ``nba_accepted``, then ``nba_converted`` (the customer bought, or took the call);
- ``u < min(0.95, 3 p)``: ``nba_accepted`` alone (the RM acted on it, the customer did not buy);
- ``u < 0.92``: ``nba_dismissed``;
- otherwise nothing: the prompt expires unanswered.

The first answer comes between 5 % and 60 % of the prompt's validity (from its triggering
event to ``expires_at``) after the trigger, a conversion in the first 70 % of what remains:
every answer arrives while the prompt is still valid, never sooner than 5 % of the validity
(2.4 hours for the shortest, 48-hour, actions). Every draw is a hash of (seed, prompt_id,
purpose), not a generator's next number: the same prompt always gets the same answer,
whatever else was answered before it, so a closed loop is deterministic and policies that
make the same prompt meet the same luck.

>>> from schemas.outputs import Prompt
>>> from simulator.preferences import _Act
>>> responder = Responder(7, {"rm_call": _Act("service", "relationship")})
>>> prompt = Prompt("nb-1", "c000001", "rm000", "rm_call", None, 0.0, (), "2026-01-07T10:00:00.000Z",
...                 "nba-linucb-1", "large_credit", "e-7-9", "2026-01-05T10:00:00.000Z")
>>> class Taste:
...     tastes, risk_level = (0.0,) * 9, 3
>>> r = responder.respond(prompt, Taste(), None)
>>> r == responder.respond(prompt, Taste(), None), round(r.probability, 4)
(True, 0.0474)
>>> all(1767607200000 < a.t_ms < 1767780000000 for a in r.answers)  # within the validity
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from schemas.events import parse_timestamp
from schemas.outputs import Prompt
from simulator.preferences import ActionLike, conversion_probability

ACCEPTED: Final = "nba_accepted"
CONVERTED: Final = "nba_converted"
DISMISSED: Final = "nba_dismissed"
#: Acceptance without a sale is this many times as likely as a conversion (capped) ...
ACCEPT_RATIO: Final = 3.0
ACCEPT_CAP: Final = 0.95
#: ... and a prompt neither accepted nor dismissed (u above this) is never answered.
DISMISS_BELOW: Final = 0.92
FIRST_ANSWER: Final = (0.05, 0.60)  # share of the validity after the trigger
CONVERSION: Final = (0.0, 0.70)  # share of the validity left after the first answer


class Tastes(Protocol):
    """What the responder reads of a customer (``simulator.population.Customer`` has it)."""

    @property
    def tastes(self) -> Sequence[float]: ...
    @property
    def risk_level(self) -> int: ...


def uniform(seed: int, *key: str) -> float:
    """A uniform draw in [0, 1) fixed by ``seed`` and ``key``.

    >>> uniform(7, "nb-1", "outcome") == uniform(7, "nb-1", "outcome") != uniform(8, "nb-1", "outcome")
    True
    """
    digest = hashlib.blake2b("\x1f".join((str(seed), *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Answer:
    """One feedback event answering a prompt: its event time (ms) and label."""

    t_ms: int
    label: str


@dataclass(frozen=True, slots=True)
class Response:
    """Everything one prompt gets back, and how likely a conversion was."""

    prompt_id: str
    customer_id: str
    probability: float  # of converting, from the customer's tastes
    answers: tuple[Answer, ...]  # in time order; empty: never answered

    @property
    def converted(self) -> bool:
        return any(a.label == CONVERTED for a in self.answers)

    @property
    def accepted(self) -> bool:
        return any(a.label == ACCEPTED for a in self.answers)

    @property
    def dismissed(self) -> bool:
        return any(a.label == DISMISSED for a in self.answers)


class Responder:
    """Answers prompts for customers with latent tastes, deterministically per prompt.

    ``catalogue`` maps each action id to its action (kind, category, risk); a prompt for an
    action the catalogue does not know gets no answer.
    """

    def __init__(self, seed: int, catalogue: Mapping[str, ActionLike]) -> None:
        self.seed = seed
        self.catalogue = dict(catalogue)

    def probability(self, customer: Tastes, action_id: str, trigger: str, viewed_category: str | None) -> float:
        """The chance that ``customer`` converts on ``action_id`` at a ``trigger`` moment."""
        action = self.catalogue.get(action_id)
        if action is None:
            return 0.0
        return conversion_probability(customer.tastes, customer.risk_level, action, trigger, viewed_category)

    def respond(self, prompt: Prompt, customer: Tastes, viewed_category: str | None) -> Response:
        """What ``customer`` answers to ``prompt``; ``viewed_category``: the category of the
        product whose view triggered the prompt, if it was one."""
        p = self.probability(customer, prompt.action, prompt.trigger, viewed_category)
        u = uniform(self.seed, prompt.prompt_id, "outcome")
        labels: tuple[str, ...]
        if prompt.action not in self.catalogue:
            labels = ()
        elif u < p:
            labels = (ACCEPTED, CONVERTED)
        elif u < min(ACCEPT_CAP, ACCEPT_RATIO * p):
            labels = (ACCEPTED,)
        elif u < DISMISS_BELOW:
            labels = (DISMISSED,)
        else:
            labels = ()
        start = round(parse_timestamp(prompt.event_ts) * 1000)
        end = round(parse_timestamp(prompt.expires_at) * 1000)
        answers: list[Answer] = []
        if labels:
            low, high = FIRST_ANSWER
            first = start + max(1, int((end - start) * (low + (high - low) * uniform(self.seed, prompt.prompt_id,
                                                                                     "answer"))))
            answers.append(Answer(first, labels[0]))
            if len(labels) > 1:
                low, high = CONVERSION
                share = low + (high - low) * uniform(self.seed, prompt.prompt_id, "conversion")
                answers.append(Answer(first + max(1, int((end - first) * share)), labels[1]))
        return Response(prompt.prompt_id, prompt.customer_id, p, tuple(answers))
