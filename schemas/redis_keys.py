"""The Redis key layout shared by the engine's Redis sinks and the dashboard (layout 3).

Both sides build every key here, so they cannot disagree. Every key starts with the
configured prefix (``[redis] key_prefix``, ``crm:``); its parts are separated by ``:``.
A part that comes from data (a customer id, an RM id, a record id, a username, a client
address, an alert type) is percent-encoded first (``encode``): every byte outside
``A-Z a-z 0-9 - . _ ~`` becomes ``%XX``, ``%`` included. An encoded part therefore holds no
``:``, so it can never run into the next part of a key: the customer ``X:events`` has the
hash ``crm:customer:{X%3Aevents}``, never the list ``crm:customer:{X}:events`` of the
customer ``X``. The encoding is one-to-one (``A`` and ``%41`` stay apart), and an encoded
part holds no ``{`` or ``}`` (no id can choose a Redis Cluster hash slot through a hash
tag of its own) and no ``*``, ``?``, ``[`` or space (a ``SCAN`` pattern matches it
literally). Ids made of the safe characters only (``c000248``, ``rm001``) are written as
they are.

Hash tags (layout 3). Redis Cluster places a key by the part between its first ``{`` and
the next ``}``; every Lua script, transaction and multi-key command must touch one slot.
So every key is tagged by what is written together:

- a customer's keys by the customer (``crm:customer:{c1}``, ``crm:customer:{c1}:events``
  and the delivered markers of what the engine wrote there): customers spread over the
  masters, one customer's keys stay together;
- an RM's prompt stream and its markers by the RM (``crm:rm:{rm1}:prompts``);
- the engine's global keys by ``{engine}`` (the alerts stream, the models hash and stream,
  their markers);
- the dashboard's keys, and the engine's input streams its actions write feedback to in
  the same script, by ``{dash}``;
- the audit log by its own name (``crm:{audit}``, ``crm:{audit}:head``, ...).

On a single Redis (or behind Sentinels) the tags change nothing but the names. The pub/sub
channel ``{prefix}alerts:live`` is not a key and has no tag. An empty id (never a valid
customer id) is tagged ``{%}``, which no encoded id can be, so its keys stay together too.

``LAYOUT_VERSION`` is kept in ``{prefix}layout`` (untagged: only ever read and set alone):
the first writer sets it and every writer refuses to write under a prefix that holds
another layout. Layout 2 had no hash tags; to move to layout 3, give the engine and the
dashboard a new ``key_prefix``, or delete the keys under the old prefix (``layout``
included) and let the engine write them again.

>>> keys = RedisKeys("crm:")
>>> keys.customer("X"), keys.customer_events("X"), keys.customer("X:events")
('crm:customer:{X}', 'crm:customer:{X}:events', 'crm:customer:{X%3Aevents}')
>>> keys.rm_prompts("rm 7{a}"), keys.rm_prompts_pattern()
('crm:rm:{rm%207%7Ba%7D}:prompts', 'crm:rm:{*}:prompts')
>>> keys.alerts(), keys.alert("a1"), keys.input_stream("events"), keys.audit_log("audit")
('crm:{engine}:alerts', 'crm:{dash}:a:a1', 'crm:{dash}:in:events', 'crm:{audit}')
>>> decode(encode("客户:1")) == "客户:1", encode("%41") != encode("A")
(True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

LAYOUT_VERSION: Final = "3"
ENGINE_TAG: Final = "{engine}"
DASHBOARD_TAG: Final = "{dash}"

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


def tag(part: str) -> str:
    """``part`` encoded as a hash tag: ``{part}`` (``{%}`` for an empty part, which no
    encoded part can be: ``{}`` would tag nothing)."""
    return "{" + (encode(part) or "%") + "}"


def has_braces(text: str) -> bool:
    """Whether ``text`` holds ``{`` or ``}``: a configured prefix or name that does would
    choose the hash slot of every key built from it."""
    return "{" in text or "}" in text


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
        return f"{self.prefix}{ENGINE_TAG}:alerts"

    def alerts_channel(self) -> str:
        """A pub/sub channel: every alert, for live views."""
        return f"{self.prefix}alerts:live"

    def customer(self, customer_id: str) -> str:
        """A hash: the customer's scores, latest alert and open alert groups."""
        return f"{self.prefix}customer:{tag(customer_id)}"

    def customer_events(self, customer_id: str) -> str:
        """A list: the customer's latest input events, summarised, newest first."""
        return f"{self.prefix}customer:{tag(customer_id)}:events"

    def customer_delivered(self, customer_id: str, record_id: str) -> str:
        """A string with a time to live: the record's writes to the customer's keys were
        delivered (idempotency marker, in the customer's slot)."""
        return f"{self.prefix}customer:{tag(customer_id)}:delivered:{encode(record_id)}"

    def customers_pattern(self) -> str:
        """A ``SCAN`` pattern matching every key of every customer (hashes, timelines,
        delivered markers)."""
        return f"{_glob_literal(self.prefix)}customer:{{*}}*"

    def rm_prompts(self, rm_id: str) -> str:
        """A stream: the next-best-action prompts for one RM."""
        return f"{self.prefix}rm:{tag(rm_id)}:prompts"

    def rm_delivered(self, rm_id: str, record_id: str) -> str:
        """A string with a time to live: the record was delivered to the RM's stream."""
        return f"{self.prefix}rm:{tag(rm_id)}:delivered:{encode(record_id)}"

    def rm_prompts_pattern(self) -> str:
        """A ``SCAN`` pattern matching every ``rm_prompts`` key."""
        return f"{_glob_literal(self.prefix)}rm:{{*}}:prompts"

    def models(self) -> str:
        """A hash: the fraud models' latest report (``report``) and champion change (``change``)."""
        return f"{self.prefix}{ENGINE_TAG}:models"

    def model_changes(self) -> str:
        """A stream: every change of champion fraud model."""
        return f"{self.prefix}{ENGINE_TAG}:models:changes"

    def delivered(self, record_id: str) -> str:
        """A string with a time to live: the record's writes to the engine's global keys
        were delivered (idempotency marker, in the ``{engine}`` slot)."""
        return f"{self.prefix}{ENGINE_TAG}:delivered:{encode(record_id)}"

    # -- shared by the engine and the dashboard ------------------------------------------

    def input_stream(self, name: str) -> str:
        """A stream: input events for the engine (``[redis] input_stream``), where the
        dashboard's actions add feedback in the same script as they change its keys."""
        return f"{self.prefix}{DASHBOARD_TAG}:in:{name}"

    def audit_log(self, name: str) -> str:
        """A list: the signed audit log (``[audit] redis_key``); its head, ids and anchor
        are ``{key}:head``, ``{key}:ids``, ``{key}:file-head``, all in its slot."""
        return f"{self.prefix}{{{name}}}"

    # -- the dashboard's own keys, under {prefix}{dash}: ---------------------------------

    def _dash(self, *parts: str) -> str:
        return f"{self.prefix}{DASHBOARD_TAG}:" + ":".join(parts)

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

    def case(self, case_id: str) -> str:
        """A hash: one case (customer, owner, status, proposal, decision, change count)."""
        return self._dash("case", encode(case_id))

    def case_alerts(self, case_id: str) -> str:
        """A sorted set: the case's alert refs by event time."""
        return self._dash("case", encode(case_id), "alerts")

    def case_log(self, case_id: str) -> str:
        """A list: the case's history (opened, joined, assigned, notes, proposals, decisions),
        oldest first, JSON entries with who and when."""
        return self._dash("case", encode(case_id), "log")

    def customer_case(self, customer_id: str) -> str:
        """A string: the customer's open case, while there is one."""
        return self._dash("ccase", encode(customer_id))

    def cases(self, which: str) -> str:
        """A sorted set of case ids by the time they were opened (ms): ``open`` (open or
        proposed) or ``closed``."""
        return self._dash("cases", encode(which))

    def backtest(self, run_id: str) -> str:
        """A hash: one rule back-test run (who, changes, status, result as JSON)."""
        return self._dash("backtest", encode(run_id))

    def backtests(self) -> str:
        """A sorted set: back-test run ids by start time (ms)."""
        return self._dash("backtests")

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
        return f"{_glob_literal(self.prefix)}{DASHBOARD_TAG}:lock:*"
