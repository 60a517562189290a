"""Server-side sessions in Redis, shared by every dashboard process.

A session id is 32 random bytes (URL-safe base64) carried in the signed cookie; Redis holds
only its SHA-256, so a copy of the keys does not let anyone sign in:

- ``{prefix}dash:session:{sha256}``: a hash (user, role, RM id, the user's ``fingerprint``,
  when and from where it signed in) that expires with the session (``session_ttl_s``);
- ``{prefix}dash:sessions:{user}``: the set of the user's session keys, to revoke them all.

Signing out deletes the session; ``revoke_user`` deletes all of a user's sessions (a
changed role or password, a disabled user). Every request, and every open event stream
once a second, asks ``valid``: a session that is gone, or whose user's entry no longer
matches its fingerprint, is refused (and the user's other sessions are revoked with it).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from dashboard.auth import Session, User, fingerprint
from schemas.redis_keys import RedisKeys

# KEYS: 1 the user's set of session keys. Deletes every session in it, then the set.
_REVOKE_ALL = """
local sessions = redis.call('SMEMBERS', KEYS[1])
for _, key in ipairs(sessions) do
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return #sessions
"""


def digest(sid: str) -> str:
    """What Redis keeps of a session id."""
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    """Create, check and revoke sessions (see the module doc); ``client`` is a
    ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, keys: RedisKeys, ttl_s: float) -> None:
        self.r, self.keys, self.ttl_ms = client, keys, int(ttl_s * 1000)
        self._revoke_all = client.register_script(_REVOKE_ALL)

    async def create(self, user: User, client_ip: str) -> str:
        """A new session for ``user``; its id (for the cookie)."""
        sid = secrets.token_urlsafe(32)
        key = self.keys.session(digest(sid))
        users_key = self.keys.user_sessions(user.username)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"u": user.username, "r": user.role, "m": user.rm_id, "fp": fingerprint(user),
                                "at": f"{time.time():.3f}", "ip": client_ip})
        pipe.pexpire(key, self.ttl_ms)
        pipe.sadd(users_key, key)
        pipe.pexpire(users_key, self.ttl_ms)  # outlives every session in it
        await pipe.execute()
        return sid

    async def valid(self, session: Session, user: User | None) -> bool:
        """Whether ``session`` (from a valid cookie) is still open and still matches its user
        as the users file now says (``None``: the user is gone)."""
        stored = await self.r.hmget(self.keys.session(digest(session.sid)), "u", "r", "m", "fp")
        if stored[0] is None or stored[0].decode() != session.username:
            return False
        if (user is None or user.disabled or stored[3].decode() != fingerprint(user)
                or (stored[1].decode(), stored[2].decode()) != (session.role, session.rm_id)):
            await self.revoke_user(session.username)
            return False
        return True

    async def revoke(self, session: Session) -> None:
        """Sign one session out."""
        key = self.keys.session(digest(session.sid))
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(self.keys.user_sessions(session.username), key)
        await pipe.execute()

    async def revoke_user(self, username: str) -> int:
        """Sign every session of ``username`` out; how many there were."""
        return int(await self._revoke_all(keys=[self.keys.user_sessions(username)]))
