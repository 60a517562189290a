"""Failed sign-ins: back-off per username and per client address, lockout, and the counts
the audit trail summarises, in Redis (every dashboard process shares them).

Failures are counted from the first one for ``window_s`` (``{prefix}dash:login:user:{name}``
and ``{prefix}dash:login:ip:{address}``). After ``free_failures`` failures of a username (or
``ip_free_failures`` of an address), each further attempt must wait ``backoff_s``, doubled
with every failure, up to ``backoff_max_s``, after the last failure: one that comes sooner
is refused (HTTP 429, ``Retry-After``) without looking at the password. After
``lockout_failures`` failures the username is locked (``{prefix}dash:lock:{name}``) for
``lockout_s``, or until an administrator unlocks it: a locked username is refused (423)
whatever the password. Unknown usernames are counted and locked like real ones, so the
answers do not tell which usernames exist. A successful sign-in clears the username's count.

An attempt is counted as a failure before its password is checked and taken back if it
succeeds, so a burst of concurrent attempts cannot all pass before the first failure is
counted.

>>> policy = LoginPolicy(free_failures=3, backoff_s=1.0, backoff_max_s=60.0)
>>> [policy.delay_s(n, policy.free_failures) for n in (1, 2, 3, 4, 5, 12)]
[0.0, 0.0, 1.0, 2.0, 4.0, 60.0]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from schemas.redis_keys import RedisKeys, decode


@dataclass(frozen=True)
class LoginPolicy:
    """The limits (``[dashboard] login_*`` and ``lockout_*``; see the module doc)."""

    window_s: float = 900.0
    free_failures: int = 3
    ip_free_failures: int = 10
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    lockout_failures: int = 10  # 0: never lock
    lockout_s: float = 1800.0

    def delay_s(self, failures: int, free: int) -> float:
        """How long after the last of ``failures`` the next attempt must wait."""
        if failures < free:
            return 0.0
        return min(self.backoff_max_s, self.backoff_s * 2.0 ** (failures - free))


@dataclass(frozen=True)
class Attempt:
    """Whether an attempt may check its password; if not, how long to wait (None: until an
    administrator unlocks, as far as this attempt knows)."""

    outcome: Literal["allowed", "throttled", "locked"]
    retry_after_s: float | None = None
    failures: int = 0  # the username's failures in the window, this attempt included


@dataclass(frozen=True)
class Failure:
    """A failed attempt: whether it began a burst (the first failure in the window) and
    whether it locked the username."""

    first: bool
    locked: bool
    failures: int
    since_ms: int


# KEYS: 1 the user's failures, 2 the address's failures, 3 the user's lock
# ARGV: 1 now (ms), 2 window (ms), 3 free failures (user), 4 free failures (address),
#       5 first back-off (ms), 6 longest back-off (ms)
_ATTEMPT = """
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'refused', 1)
  return {'locked', redis.call('PTTL', KEYS[3]), 0}
end
local function wait(key, free)
  local held = redis.call('HMGET', key, 'failures', 'last')
  local failures = tonumber(held[1] or '0')
  if failures < free then
    return 0
  end
  local delay = math.min(tonumber(ARGV[6]), tonumber(ARGV[5]) * 2 ^ (failures - free))
  return math.max(0, tonumber(held[2]) + delay - now)
end
local waits = math.max(wait(KEYS[1], tonumber(ARGV[3])), wait(KEYS[2], tonumber(ARGV[4])))
if waits > 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'throttled', 1)
  end
  return {'throttled', math.ceil(waits), 0}
end
local function count(key)
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  redis.call('HSET', key, 'last', now)
  if failures == 1 then
    redis.call('HSET', key, 'first', now)
    redis.call('PEXPIRE', key, ARGV[2])
  end
  return failures
end
local failures = count(KEYS[1])
count(KEYS[2])
return {'allowed', 0, failures}
"""

# KEYS: 1 the user's failures, 2 the user's lock
# ARGV: 1 now (ms), 2 failures that lock (0: never), 3 lockout (ms), 4 client address
_FAILED = """
local held = redis.call('HMGET', KEYS[1], 'failures', 'first', 'throttled')
local failures = tonumber(held[1] or '0')
local first = tonumber(held[2] or ARGV[1])
local threshold = tonumber(ARGV[2])
if threshold > 0 and failures >= threshold and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'since', ARGV[1], 'first', first, 'failures', failures,
             'throttled', held[3] or '0', 'ip', ARGV[4], 'refused', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[1])
  return {failures, 1, first}
end
return {failures, 0, first}
"""

# KEYS: 1 the user's failures, 2 the address's failures. Takes back the attempt counted as a
# failure, clears the user's count; the failures and throttled attempts before this one.
_SUCCEEDED = """
local held = redis.call('HMGET', KEYS[1], 'failures', 'throttled')
redis.call('DEL', KEYS[1])
if redis.call('HINCRBY', KEYS[2], 'failures', -1) <= 0 then
  redis.call('DEL', KEYS[2])
end
return {math.max(0, tonumber(held[1] or '1') - 1), tonumber(held[2] or '0')}
"""


class LoginGuard:
    """Counts, back-off and locks of sign-ins (see the module doc); ``client`` is a
    ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, keys: RedisKeys, policy: LoginPolicy) -> None:
        self.r, self.keys, self.policy = client, keys, policy
        self._attempt = client.register_script(_ATTEMPT)
        self._failed = client.register_script(_FAILED)
        self._succeeded = client.register_script(_SUCCEEDED)

    def _keys(self, username: str, ip: str) -> tuple[str, str]:
        return self.keys.login_failures("user", username), self.keys.login_failures("ip", ip)

    async def attempt(self, username: str, ip: str, now: float | None = None) -> Attempt:
        """May this attempt check its password? If so, it is counted as a failure until
        ``succeeded`` takes it back."""
        p = self.policy
        user_key, ip_key = self._keys(username, ip)
        outcome, wait_ms, failures = await self._attempt(
            keys=[user_key, ip_key, self.keys.lock(username)],
            args=[_ms(now), int(p.window_s * 1000), p.free_failures, p.ip_free_failures, int(p.backoff_s * 1000),
                  int(p.backoff_max_s * 1000)])
        kind = outcome.decode()
        if kind == "locked":
            return Attempt("locked", wait_ms / 1000 if wait_ms > 0 else None)
        if kind == "throttled":
            return Attempt("throttled", wait_ms / 1000)
        return Attempt("allowed", failures=int(failures))

    async def failed(self, username: str, ip: str, attempt: Attempt, now: float | None = None) -> Failure:
        """The attempt's password was wrong (or the user unknown or disabled)."""
        p = self.policy
        failures, locked, first = await self._failed(
            keys=[self._keys(username, ip)[0], self.keys.lock(username)],
            args=[_ms(now), p.lockout_failures, int(p.lockout_s * 1000), ip])
        return Failure(attempt.failures == 1, bool(locked), int(failures), int(first))

    async def succeeded(self, username: str, ip: str) -> tuple[int, int]:
        """The attempt signed in: its count taken back, the username's count cleared; the
        failures and the throttled attempts that came before it in the window."""
        failures, throttled = await self._succeeded(keys=list(self._keys(username, ip)))
        return int(failures), int(throttled)

    async def retry_after_s(self, username: str, ip: str, now: float | None = None) -> float:
        """How long the next attempt of ``username`` from ``ip`` must wait (0: none)."""
        pipe = self.r.pipeline(transaction=False)
        for key in self._keys(username, ip):
            pipe.hmget(key, "failures", "last")
        (user_f, user_last), (ip_f, ip_last) = await pipe.execute()
        now_s = time.time() if now is None else now
        waits = [float(last) / 1000 + self.policy.delay_s(int(failures), free) - now_s
                 for (failures, last), free in (((user_f, user_last), self.policy.free_failures),
                                                ((ip_f, ip_last), self.policy.ip_free_failures))
                 if failures is not None and last is not None]
        return max([0.0, *waits])

    async def unlock(self, username: str) -> dict[str, str] | None:
        """Lift the lock of ``username`` (and clear its count); what the lock held, or None
        if it was not locked."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self.keys.lock(username))
        pipe.delete(self.keys.lock(username), self.keys.login_failures("user", username))
        held, _ = await pipe.execute()
        return {k.decode(): v.decode() for k, v in held.items()} if held else None

    async def locks(self) -> list[dict[str, Any]]:
        """Every locked username with what its lock holds and how long it has left."""
        out = []
        async for raw in self.r.scan_iter(match=self.keys.locks_pattern(), count=1000):
            key = raw.decode()
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.pttl(key)
            held, ttl = await pipe.execute()
            if held:
                fields = {k.decode(): v.decode() for k, v in held.items()}
                out.append({"username": decode(key.rsplit(":", 1)[1]), "since": _ts(fields.get("since")),
                            "first_failure": _ts(fields.get("first")), "failures": int(fields.get("failures", 0)),
                            "refused_while_locked": int(fields.get("refused", 0)), "last_ip": fields.get("ip", ""),
                            "expires_in_s": math.ceil(ttl / 1000) if ttl > 0 else None})
        return sorted(out, key=lambda lock: str(lock["username"]))


def _ms(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


def _ts(ms: str | None) -> str | None:
    from schemas.outputs import format_ts

    return format_ts(int(ms) / 1000) if ms else None
