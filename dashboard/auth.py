"""Users, passwords, roles and session tokens.

Passwords are kept only as scrypt hashes (``hashlib.scrypt``, n=2**14, r=8, p=1, a random
16-byte salt) in a TOML file that ``python run.py dashboard add-user`` maintains (and
``disable-user``: a disabled user cannot sign in). A running dashboard reads the file again
when it changes. A session cookie holds the user, role, RM id, expiry and the id of a
session kept in Redis (``dashboard.sessions``), signed with HMAC-SHA256 under the
dashboard's secret: a cookie that was edited, or has expired, is refused before Redis is
asked, and one whose session is gone (signed out, revoked) is refused by Redis. A session
also records the user's ``fingerprint`` (a hash of role, RM id, password hash and whether the
user is disabled): once the user's entry changes, the session no longer matches. The CSRF
token of a session is an HMAC of its session id: state-changing requests must carry it in a
header, which a page of another site cannot set (and the cookie is ``SameSite=Strict``
besides).

>>> stored = hash_password("correct horse")
>>> verify_password("correct horse", stored), verify_password("wrong", stored)
(True, False)
>>> signer = Signer(b"k" * 32)
>>> token = signer.issue(User("ana", "risk_analyst", "", ""), ttl_s=60, now=1000.0, sid="s1")
>>> signer.read(token, now=1030.0).username, signer.read(token, now=1030.0).sid
('ana', 's1')
>>> signer.read(token, now=2000.0) is None  # expired
True
>>> signer.read(token[:-2] + "AA", now=1030.0) is None  # tampered
True
>>> fingerprint(User("ana", "risk_analyst", "", "h")) == fingerprint(User("ana", "admin", "", "h"))
False
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson

log = logging.getLogger(__name__)
Role = Literal["risk_analyst", "rm", "admin"]
ROLES: Final = ("risk_analyst", "rm", "admin")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


#: A hash no password matches, verified for unknown users so that a login takes as long for
#: a user that does not exist as for a wrong password.
_DUMMY_HASH: Final = hash_password(secrets.token_urlsafe(16), salt=b"\0" * 16)


@dataclass(frozen=True)
class User:
    """A dashboard user; ``rm_id`` is the RM whose customers an ``rm`` user may see."""

    username: str
    role: str
    rm_id: str
    password_hash: str
    disabled: bool = False


def fingerprint(user: User) -> str:
    """A digest of what a session depends on: it changes when the user's role, RM id or
    password changes or the user is disabled, and then the user's sessions are refused."""
    text = "|".join((user.username, user.role, user.rm_id, user.password_hash, str(user.disabled)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_users(path: Path) -> dict[str, User]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    users: dict[str, User] = {}
    for name, entry in data.get("users", {}).items():
        role = entry.get("role")
        if role not in ROLES:
            raise ValueError(f"{path}: user {name!r} has role {role!r}, expected one of {ROLES}")
        if role == "rm" and not entry.get("rm_id"):
            raise ValueError(f"{path}: user {name!r} is an rm without an rm_id")
        users[name] = User(name, role, entry.get("rm_id", ""), entry["password"], bool(entry.get("disabled", False)))
    return users


class UserStore:
    """The users file: ``[users.NAME]`` tables with ``role``, ``password`` (a hash), ``rm_id``
    and ``disabled`` (when true). ``refresh`` reads the file again when it has changed (at
    most every ``reload_interval_s``); a file that cannot be read leaves no user at all."""

    def __init__(self, users: dict[str, User], path: Path | None = None, reload_interval_s: float = 1.0) -> None:
        self._users = users
        self._path = path
        self._reload_interval_s = reload_interval_s
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    @classmethod
    def load(cls, path: str | Path, reload_interval_s: float = 1.0) -> UserStore:
        return cls(_read_users(Path(path)), Path(path), reload_interval_s)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self, now: bool = False) -> bool:
        """Read the file again if it changed since it was read; whether it was read. Checked
        at most every ``reload_interval_s`` unless ``now`` (a sign-in: a user disabled a
        moment ago must not get in)."""
        if self._path is None or (not now and time.monotonic() - self._checked < self._reload_interval_s):
            return False
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self._users = _read_users(self._path)
        except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
            self._users = {}  # fail closed: nobody signs in on a users file that cannot be read
            log.error("%s: cannot read the users file; every user is refused until it is fixed: %s", self._path, exc)
        return True

    def __len__(self) -> int:
        return len(self._users)

    def names(self) -> list[str]:
        return sorted(self._users)

    def authenticate(self, username: str, password: str) -> User | None:
        user = self._users.get(username)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        return user if ok and user is not None and not user.disabled else None

    def get(self, username: str) -> User | None:
        return self._users.get(username)


def add_user(path: str | Path, username: str, role: str, password: str, rm_id: str = "") -> bool:
    """Add or replace ``username`` in the users file (created with mode 0600), enabled;
    whether it replaced a user (whose sessions are then to be revoked)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if role == "rm" and not rm_id:
        raise ValueError("an rm user needs --rm-id")
    if not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError("a username is letters, digits, '.', '-' and '_'")
    path = Path(path)
    users = _raw_users(path)
    replaced = username in users
    users[username] = {"role": role, "rm_id": rm_id, "password": hash_password(password)}
    _write_users(path, users)
    return replaced


def disable_user(path: str | Path, username: str) -> None:
    """Mark ``username`` disabled in the users file: it can no longer sign in."""
    path = Path(path)
    users = _raw_users(path)
    if username not in users:
        raise ValueError(f"no user {username!r} in {path}")
    users[username] = {**users[username], "disabled": True}
    _write_users(path, users)


def _raw_users(path: Path) -> dict[str, dict[str, Any]]:
    return dict(tomllib.loads(path.read_text()).get("users", {})) if path.exists() else {}


def _write_users(path: Path, users: dict[str, dict[str, Any]]) -> None:
    lines = ["# Dashboard users: `python run.py dashboard add-user`. Passwords are scrypt hashes.", ""]
    for name in sorted(users):
        entry = users[name]
        lines.append(f"[users.{name}]")
        lines += [f"{key} = {orjson.dumps(str(entry.get(key, ''))).decode()}" for key in ("role", "rm_id", "password")]
        if entry.get("disabled"):
            lines.append("disabled = true")
        lines.append("")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines))
    os.replace(tmp, path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """What a valid session cookie says."""

    username: str
    role: str
    rm_id: str
    sid: str
    expires: float


class Signer:
    """Issues and checks signed session tokens and their CSRF tokens."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"session|" + secret).digest()
        self._csrf_key = hashlib.sha256(b"csrf|" + secret).digest()

    def issue(self, user: User, ttl_s: float, now: float, sid: str) -> str:
        """A token for the session ``sid`` (kept server-side) of ``user``."""
        body = _b64(orjson.dumps({"u": user.username, "r": user.role, "m": user.rm_id, "s": sid, "e": now + ttl_s}))
        return f"{body}.{_b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())}"

    def read(self, token: str, now: float) -> Session | None:
        body, _, mac = token.partition(".")
        try:
            expected = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_unb64(mac), expected):
                return None
            data = orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if data["e"] <= now:
            return None
        return Session(data["u"], data["r"], data["m"], data["s"], data["e"])

    def csrf(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()
