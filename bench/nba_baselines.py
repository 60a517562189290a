"""What the next-best-action evaluations share: baseline policies and an independent rule check.

- ``RandomPolicy``, ``FixedPolicy``: the baselines the bandit is compared with; each follows
  ``detectors.nba.Policy`` (``pull`` / ``update`` / ``revise``), so it can take the bandit's
  place in ``detectors.nba.NextBestAction`` (``bench.nba_eval``) or in the engine's shared
  step (``bench.nba_loop``).
- ``RuleCheck``: the contact rules re-checked from the records of what happened (the prompts
  sent, the answers given, the customers' facts at the time), independently of
  ``detectors.nba``'s own bookkeeping: it prevents nothing, it counts what broke.

>>> policy = FixedPolicy("rm_call", seed=1)
>>> policy.pull(["rm_call", "send_research"], ())[0], policy.pull(["send_research"], ())[0]
('rm_call', 'send_research')
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from detectors.nba import WEEK, Action, CustomerFacts, NBAParams
from schemas.outputs import Prompt

DAY = 86400.0


class RandomPolicy:
    """A uniformly random eligible action; learns nothing."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        return self._rng.choice(list(arms)), 0.0, 0.0

    def update(self, arm: str, x: Sequence[float], reward: float) -> None:
        pass

    def revise(self, arm: str, x: Sequence[float], old: float, new: float) -> None:
        pass


class FixedPolicy(RandomPolicy):
    """One action whenever it is eligible, else a random eligible one."""

    def __init__(self, action_id: str, seed: int) -> None:
        super().__init__(seed)
        self.action_id = action_id

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        return (self.action_id, 0.0, 0.0) if self.action_id in arms else super().pull(arms, x)


@dataclass(frozen=True, slots=True)
class _Sent:
    customer_id: str
    action_id: str
    expires_t: float


class RuleCheck:
    """Counts the prompts that break a contact rule (``violations``, by rule).

    Rules, as ``config/default.toml`` ``[nba]`` states them: no prompt to an opted-out
    customer (``opt_out``); no product above the customer's risk grade, none at all without
    a grade (``suitability``); no sales action under an open fraud alert (``open_fraud``); at
    most ``max_prompts_per_week`` prompts in any 7 days (``weekly_cap``); no action within
    ``cooldown_days`` of its dismissal (``cooldown``); not an action while an earlier prompt
    of it awaits a final answer (``pending``); an action only at the triggers it is for
    (``trigger``). An answer after a prompt expired changes nothing.
    """

    def __init__(self, params: NBAParams, catalogue: Mapping[str, Action]) -> None:
        self.params, self.catalogue = params, catalogue
        self.sent: dict[str, list[float]] = defaultdict(list)  # customer -> prompt times
        self.dismissed: dict[tuple[str, str], float] = {}  # (customer, action) -> time
        self.prompts: dict[str, _Sent] = {}
        self.awaiting: dict[str, dict[str, _Sent]] = defaultdict(dict)  # customer -> prompt_id -> sent
        self.violations: Counter[str] = Counter()

    def prompt(self, prompt: Prompt, t: float, facts: CustomerFacts) -> list[str]:
        """Record ``prompt``, sent at ``t`` to a customer with ``facts``; the rules it broke."""
        action, cid = self.catalogue[prompt.action], prompt.customer_id
        broken = []
        if facts.marketing_opt_out:
            broken.append("opt_out")
        if action.kind == "product" and (facts.risk_level is None or action.risk > facts.risk_level):
            broken.append("suitability")
        if action.sales and facts.open_fraud_alert:
            broken.append("open_fraud")
        if sum(1 for s in self.sent[cid] if t - WEEK < s <= t) >= self.params.max_prompts_per_week:
            broken.append("weekly_cap")
        last = self.dismissed.get((cid, action.action_id))
        if last is not None and t - last < self.params.cooldown_days * DAY:
            broken.append("cooldown")
        if any(s.action_id == action.action_id and s.expires_t > t for s in self.awaiting[cid].values()):
            broken.append("pending")
        if action.triggers and prompt.trigger not in action.triggers:
            broken.append("trigger")
        self.violations.update(broken)
        self.sent[cid] = [s for s in self.sent[cid] if s > t - WEEK] + [t]
        sent = _Sent(cid, action.action_id, t + action.ttl_hours * 3600.0)
        self.prompts[prompt.prompt_id] = sent
        self.awaiting[cid] = {p: s for p, s in self.awaiting[cid].items() if s.expires_t > t}
        self.awaiting[cid][prompt.prompt_id] = sent
        return broken

    def answer(self, prompt_id: str, label: str, t: float) -> None:
        """Record an answer (``nba_*`` label) to a prompt at time ``t``."""
        sent = self.prompts.get(prompt_id)
        if sent is None or t >= sent.expires_t:
            return
        if label == "nba_dismissed":
            self.dismissed[(sent.customer_id, sent.action_id)] = t
        if label in ("nba_dismissed", "nba_converted"):  # a final answer
            self.awaiting[sent.customer_id].pop(prompt_id, None)
