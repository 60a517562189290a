"""The Redis key layout shared by the engine's Redis sinks and the dashboard (layout 2).

Both sides build every key here, so they cannot disagree. Every key starts with the
configured prefix (``[redis] key_prefix``, ``crm:``); its parts are separated by ``:``.
A part that comes from data (a customer id, an RM id, a record id, a username, a client
address, an alert type) is percent-encoded first (``encode``): every byte outside
``A-Z a-z 0-9 - . _ ~`` becomes ``%XX``, ``%`` included. An encoded part therefore holds no
``:``, so it can never run into the next part of a key: the customer ``X:events`` has the
hash ``crm:customer:X%3Aevents``, never the list ``crm:customer:X:events`` of the customer
``X``. The encoding is one-to-one (``A`` and ``%41`` stay apart), and an encoded part holds
no ``{`` or ``}`` (no id can choose a Redis Cluster hash slot through a hash tag) and no
``*``, ``?``, ``[`` or space (a ``SCAN`` pattern matches it literally). Ids made of the safe
characters only (``c000248``, ``rm001``) are written as they are.

``LAYOUT_VERSION`` is kept in ``{prefix}layout``: the first writer sets it and every writer
refuses to write under a prefix that holds another layout.

>>> keys = RedisKeys("crm:")
>>> keys.customer("X"), keys.customer_events("X"), keys.customer("X:events")
('crm:customer:X', 'crm:customer:X:events', 'crm:customer:X%3Aevents')
>>> keys.rm_prompts("rm 7{a}"), keys.rm_prompts_pattern()
('crm:rm:rm%207%7Ba%7D:prompts', 'crm:rm:*:prompts')
>>> decode(encode("客户:1")) == "客户:1", encode("%41") != encode("A")
(True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

LAYOUT_VERSION: Final = "2"

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def _glob_literal(text: str) -> str:
    """``text`` with the characters special in a ``SCAN`` pattern escaped."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def encode(part: str) -> str:
    """``part`` percent-encoded (UTF-8): only ``A-Z a-z 0-9 - . _ ~`` are kept as they are."""
    return quote(part, safe="")


def decode(part: str) -> str:
    """The inverse of ``encode``."""
    return unquote(part)


@dataclass(frozen=True)
class RedisKeys:
    """Every key the engine and the dashboard use under one prefix (one method per key)."""

    prefix: str

    # -- written by the engine (sinks.redis) ---------------------------------------------

    def layout(self) -> str:
        """A string: the layout version the keys under this prefix follow."""
        return f"{self.prefix}layout"

    def alerts(self) -> str:
        """A stream: every alert revision (``id``, ``data``)."""
        return f"{self.prefix}alerts"

    def alerts_channel(self) -> str:
        """A pub/sub channel: every alert, for live views."""
        return f"{self.prefix}alerts:live"

    def customer(self, customer_id: str) -> str:
        """A hash: the customer's scores, latest alert and open alert groups."""
        return f"{self.prefix}customer:{encode(customer_id)}"

    def customer_events(self, customer_id: str) -> str:
        """A list: the customer's latest input events, summarised, newest first."""
        return f"{self.prefix}customer:{encode(customer_id)}:events"

    def rm_prompts(self, rm_id: str) -> str:
        """A stream: the next-best-action prompts for one RM."""
        return f"{self.prefix}rm:{encode(rm_id)}:prompts"

    def rm_prompts_pattern(self) -> str:
        """A ``SCAN`` pattern matching every ``rm_prompts`` key."""
        return f"{_glob_literal(self.prefix)}rm:*:prompts"

    def models(self) -> str:
        """A hash: the fraud models' latest report (``report``) and champion change (``change``)."""
        return f"{self.prefix}models"

    def model_changes(self) -> str:
        """A stream: every change of champion fraud model."""
        return f"{self.prefix}models:changes"

    def delivered(self, record_id: str) -> str:
        """A string with a time to live: the record was delivered (idempotency marker)."""
        return f"{self.prefix}delivered:{encode(record_id)}"

    # -- the dashboard's own keys, under {prefix}dash: -----------------------------------

    def _dash(self, *parts: str) -> str:
        return self.prefix + "dash:" + ":".join(parts)

    def ref_key(self) -> str:
        """A string: the key refs (keyed hashes of group keys and customer ids) are made with."""
        return self._dash("refkey")

    def cursors(self) -> str:
        """A hash: stream key -> the last entry id the indexer read."""
        return self._dash("cursors")

    def alert(self, ref: str) -> str:
        """A hash: one alert group (latest revision, workflow status, assignee)."""
        return self._dash("a", encode(ref))

    def queue(self, which: str) -> str:
        """A sorted set of alert refs by event time: ``all`` or ``active``."""
        return self._dash("idx", encode(which))

    def queue_by(self, facet: str, value: str) -> str:
        """A sorted set of alert refs by event time with one ``status``, ``type``, ``sev`` or ``rm``."""
        return self._dash("idx", encode(facet), encode(value))

    def queue_cache(self, digest: str) -> str:
        """A sorted set with a short time to live: the intersection of a filtered page."""
        return self._dash("tmp", encode(digest))

    def scores(self) -> str:
        """A sorted set: alert ref -> score."""
        return self._dash("scores")

    def volume(self) -> str:
        """A hash: hour of event time -> alerts."""
        return self._dash("volume")

    def customer_alerts(self, customer_id: str) -> str:
        """A sorted set: the customer's alert refs by event time."""
        return self._dash("cust", encode(customer_id))

    def customer_prompts(self, customer_id: str) -> str:
        """A sorted set: the customer's prompt ids by event time."""
        return self._dash("cprompts", encode(customer_id))

    def owner(self, customer_id: str) -> str:
        """A string: the customer's RM id."""
        return self._dash("owner", encode(customer_id))

    def customer_ref(self, cref: str) -> str:
        """A string: the customer id behind a customer ref."""
        return self._dash("cref", encode(cref))

    def prompt(self, prompt_id: str) -> str:
        """A string: the prompt (JSON) with its status."""
        return self._dash("p", encode(prompt_id))

    def rm_queue(self, rm_id: str) -> str:
        """A sorted set: the RM's prompts waiting for an answer."""
        return self._dash("pq", encode(rm_id))

    def rm_accepted(self, rm_id: str) -> str:
        """A sorted set: the RM's accepted prompts (may still convert)."""
        return self._dash("pa", encode(rm_id))

    def rm_stats(self, rm_id: str) -> str:
        """A hash: the RM's prompts, accepted, dismissed, converted."""
        return self._dash("rmstat", encode(rm_id))

    def session(self, digest: str) -> str:
        """A hash with a time to live: one signed-in session (by the SHA-256 of its id)."""
        return self._dash("session", encode(digest))

    def user_sessions(self, username: str) -> str:
        """A set: the digests of a user's sessions (to revoke them all)."""
        return self._dash("sessions", encode(username))

    def login_failures(self, scope: str, who: str) -> str:
        """A hash with a time to live: failed logins in the current window for a
        ``user`` or a client ``ip``."""
        return self._dash("login", encode(scope), encode(who))

    def lock(self, username: str) -> str:
        """A hash with a time to live: the user is locked out."""
        return self._dash("lock", encode(username))

    def locks_pattern(self) -> str:
        """A ``SCAN`` pattern matching every ``lock`` key."""
        return f"{_glob_literal(self.prefix)}dash:lock:*"
