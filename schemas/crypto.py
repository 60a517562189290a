"""Field-level encryption of personal data at rest: the envelope, the key file, the fields.

With ``[crypto] enabled``, the engine seals the personal fields (``PERSONAL_FIELDS``) of
what it stores about people (the Redis timelines and customer hashes, the audit log's
records) before they leave the process; the dashboard opens them for the roles that may see
them. Everything else in a record (ids the keys are made of, amounts, times, scores) stays
as it is, so readers that do not need the personal fields need no key.

Envelope (version 1): one ASCII string in place of the field's JSON value::

    pii1.<alg>.<key id>.<base64url(nonce 12 bytes || ciphertext || tag 16 bytes), no padding>

``alg`` is ``sm4g`` (SM4-GCM, GB/T 32907 in GCM as in RFC 8998, 128-bit key) or ``a256g``
(AES-256-GCM). The plaintext is the field's canonical JSON (so a number stays a number).
The associated data is ``crm-pii``, a NUL byte, the envelope's header (``pii1.<alg>.<key
id>``), a NUL byte and the field's name: an envelope moved to another field, or given
another key id, does not open. The cipher key is derived from the key file's key with
HMAC-SHA256 (``crm-pii-enc`` and the algorithm), the nonce key likewise (``crm-pii-nonce``).

Nonces are synthetic: HMAC-SHA256 under the nonce key of the field's name, the record's id
(``context``) and the plaintext, cut to 12 bytes. The same field of the same record sealed
twice gives the same envelope, so the sinks' de-duplication of replayed records still works
and a replay stays byte-identical; the same payee in two events gives two unrelated
envelopes (no linking by ciphertext). A nonce repeats only for the same (field, record,
value), which then is the same message: GCM leaks nothing more.

Keys: a key file (TOML, ``run.py keys keygen``) or the same text from the environment
(a Secret): ``algorithm`` for new envelopes, ``active`` the key id new envelopes use,
``[keys]`` key id -> base64 key of 32 bytes. Envelopes name their key and algorithm, so
after ``run.py keys rotate`` (a new active key) the old keys keep opening what they sealed.

>>> keys = PiiKeys.parse('algorithm = "sm4-gcm"\\nactive = "p1"\\n[keys]\\np1 = "' + "QUJD" * 10 + 'QUI="\\n')
>>> sealer = Sealer(keys)
>>> sealed = sealer.seal_record({"event_id": "e1", "counterparty_id": "6222020200112233445"}, "e1")
>>> sealed["event_id"], sealed["counterparty_id"][:13]
('e1', 'pii1.sm4g.p1.')
>>> sealer.open_record(sealed)
{'event_id': 'e1', 'counterparty_id': '6222020200112233445'}
>>> masked({"a": sealed}, "***")["a"]["counterparty_id"]
'***'
>>> Sealer(PiiKeys.generate("p2")).open_record(sealed)
Traceback (most recent call last):
...
schemas.crypto.CannotDecrypt: field counterparty_id: sealed with key p1, which the key file does not hold
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from schemas.audit import read_key_file

ENVELOPE_VERSION: Final = "pii1"
KEY_BYTES: Final = 32
KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
Algorithm = Literal["sm4-gcm", "aes-256-gcm"]
ALGORITHMS: Final[dict[str, str]] = {"sm4-gcm": "sm4g", "aes-256-gcm": "a256g"}  # name -> envelope tag
_BY_TAG: Final = {tag: name for name, tag in ALGORITHMS.items()}
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_AAD_DOMAIN: Final = b"crm-pii\x00"
_ENVELOPE: Final = re.compile(r"pii1\.(sm4g|a256g)\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]+)")

#: The fields that identify or describe a person, wherever they appear in a stored record
#: (timelines' event summaries, customer hashes, audit records, events' ``properties``).
#: Ids that Redis keys are made of (``customer_id``, ``rm_id``) are not among them: see the
#: README (Encryption at rest).
PERSONAL_FIELDS: Final = frozenset({
    "counterparty_id", "device_id", "account_id", "session_id", "ip", "ip_address",
    "name", "full_name", "first_name", "last_name", "customer_name", "payee_name",
    "phone", "mobile", "phone_number", "email", "id_number", "id_card", "national_id",
    "passport", "card_number", "pan", "iban", "address", "birth_date", "birth_year",
    "city", "comment", "note", "notes", "text_note", "free_text", "memo", "description",
})


class PiiKeyError(ValueError):
    """The key file is missing, unreadable or malformed. The message names the file and the
    problem, never key material."""


class CannotDecrypt(ValueError):
    """An envelope that does not open: its key is not in the key file, or it fails its
    authentication (wrong key material under that id, or altered). The message names the
    field and the key id, never the plaintext."""


def is_sealed(value: object) -> bool:
    """Whether ``value`` is an envelope.

    >>> is_sealed("pii1.sm4g.p1.AAAA"), is_sealed("p-42")
    (True, False)
    """
    return isinstance(value, str) and value.startswith("pii1.") and _ENVELOPE.fullmatch(value) is not None


@dataclass(frozen=True)
class PiiKeys:
    """The keys of a key file: ``active`` seals (with ``algorithm``), any key opens what
    names it. ``repr`` shows key ids only.

    >>> keys = PiiKeys.generate("p1", "aes-256-gcm")
    >>> keys
    PiiKeys(algorithm='aes-256-gcm', active='p1', ids=['p1'])
    >>> PiiKeys.parse(keys.to_text()) == keys
    True
    """

    active: str
    keys: Mapping[str, bytes] = field(repr=False)
    algorithm: Algorithm = "sm4-gcm"

    def __repr__(self) -> str:
        return f"PiiKeys(algorithm={self.algorithm!r}, active={self.active!r}, ids={sorted(self.keys)})"

    @classmethod
    def parse(cls, text: str, source: str = "the PII key file") -> PiiKeys:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PiiKeyError(f"{source}: not TOML ({exc})") from None
        table, active, algorithm = doc.get("keys"), doc.get("active"), doc.get("algorithm", "sm4-gcm")
        if algorithm not in ALGORITHMS:
            raise PiiKeyError(f"{source}: algorithm {str(algorithm)[:32]!r} is not one of {sorted(ALGORITHMS)}")
        if not isinstance(table, dict) or not table:
            raise PiiKeyError(f"{source}: no [keys] table")
        keys: dict[str, bytes] = {}
        for kid, encoded in table.items():
            if not KEY_ID.fullmatch(kid):
                raise PiiKeyError(f"{source}: key id {kid[:64]!r} is not 1-64 letters, digits, '_' or '-'")
            try:
                keys[kid] = base64.b64decode(str(encoded), validate=True)
            except binascii.Error:
                raise PiiKeyError(f"{source}: key {kid} is not base64") from None
            if len(keys[kid]) != KEY_BYTES:
                raise PiiKeyError(f"{source}: key {kid} has {len(keys[kid])} bytes; {KEY_BYTES} are needed")
        if not isinstance(active, str) or active not in keys:
            raise PiiKeyError(f"{source}: active = {str(active)[:64]!r} names no key of [keys]")
        extra = sorted(set(doc) - {"keys", "active", "algorithm"})
        if extra:
            raise PiiKeyError(f"{source}: unknown setting {extra[0]!r}")
        return cls(active, keys, algorithm)

    @classmethod
    def load(cls, path: str | Path) -> PiiKeys:
        """The key file at ``path``; any problem is a ``PiiKeyError`` saying what to do."""
        return cls.parse(read_key_file(path, "PII", "keys keygen", PiiKeyError), str(path))

    @classmethod
    def generate(cls, key_id: str | None = None, algorithm: Algorithm = "sm4-gcm") -> PiiKeys:
        """A new key of 32 random bytes (id ``p-`` and 8 random hex digits unless given)."""
        kid = key_id or f"p-{secrets.token_hex(4)}"
        if not KEY_ID.fullmatch(kid):
            raise PiiKeyError(f"key id {kid[:64]!r} is not 1-64 letters, digits, '_' or '-'")
        if algorithm not in ALGORITHMS:
            raise PiiKeyError(f"algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
        return cls(kid, {kid: secrets.token_bytes(KEY_BYTES)}, algorithm)

    def rotated(self, key_id: str | None = None, algorithm: Algorithm | None = None) -> PiiKeys:
        """These keys and a new one, which becomes the active key (the algorithm of new
        envelopes may change with it)."""
        new = PiiKeys.generate(key_id, algorithm or self.algorithm)
        if new.active in self.keys:
            raise PiiKeyError(f"the key file already holds a key {new.active}")
        return PiiKeys(new.active, {**self.keys, **new.keys}, new.algorithm)

    def to_text(self) -> str:
        lines = ["# Keys of the personal-data encryption (python run.py keys keygen). Secret: readable",
                 "# only by the engine and the dashboard, never stored with the data. Keep retired keys:",
                 "# they open what was sealed with them.",
                 f'algorithm = "{self.algorithm}"', f'active = "{self.active}"', "", "[keys]"]
        lines += [f'{kid} = "{base64.b64encode(key).decode()}"' for kid, key in self.keys.items()]
        return "\n".join(lines) + "\n"


def _derive(key: bytes, label: bytes, size: int) -> bytes:
    return hmac.new(key, b"crm-pii-" + label, hashlib.sha256).digest()[:size]


class _Cipher:
    """One key's derived keys for one algorithm. AES-256-GCM goes through ``cryptography``'s
    one-shot AEAD class; SM4-GCM, which has none, through its ``Cipher`` API (slower: an
    OpenSSL context per call)."""

    def __init__(self, key: bytes, tag: str) -> None:
        from cryptography.hazmat.primitives.ciphers import algorithms
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.tag = tag
        self._aead = AESGCM(_derive(key, b"enc\x00aes-256-gcm", 32)) if tag == "a256g" else None
        self._sm4 = algorithms.SM4(_derive(key, b"enc\x00sm4-gcm", 16)) if tag == "sm4g" else None
        self.nonce_key = _derive(key, b"nonce", 32)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Ciphertext and tag."""
        if self._aead is not None:
            return self._aead.encrypt(nonce, plaintext, aad)
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        enc = Cipher(self._sm4, modes.GCM(nonce)).encryptor()  # type: ignore[arg-type]
        enc.authenticate_additional_data(aad)
        out = enc.update(plaintext) + enc.finalize()
        return out + enc.tag

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ciphertext and tag (``InvalidTag`` if they do not authenticate)."""
        if self._aead is not None:
            return self._aead.decrypt(nonce, sealed, aad)
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        dec = Cipher(self._sm4, modes.GCM(nonce, sealed[-_TAG_BYTES:])).decryptor()  # type: ignore[arg-type]
        dec.authenticate_additional_data(aad)
        return dec.update(sealed[:-_TAG_BYTES]) + dec.finalize()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """Seals and opens fields with a ``PiiKeys``; ``seal_record`` / ``open_record`` walk a
    record's JSON value."""

    def __init__(self, keys: PiiKeys, fields: frozenset[str] = PERSONAL_FIELDS) -> None:
        self.keys = keys
        self.fields = fields
        self._ciphers: dict[tuple[str, str], _Cipher] = {}
        self._active = self._cipher(keys.active, ALGORITHMS[keys.algorithm])

    def _cipher(self, kid: str, tag: str) -> _Cipher:
        cipher = self._ciphers.get((kid, tag))
        if cipher is None:
            cipher = self._ciphers[(kid, tag)] = _Cipher(self.keys.keys[kid], tag)
        return cipher

    def seal(self, name: str, value: Any, context: str = "") -> str:
        """The envelope of the field ``name``'s ``value`` with the active key; deterministic
        for one ``context`` (the record's id), random without one."""
        plaintext = orjson.dumps(value)
        cipher = self._active
        header = f"{ENVELOPE_VERSION}.{cipher.tag}.{self.keys.active}"
        if context:
            nonce = hmac.digest(cipher.nonce_key, b"\x00".join((name.encode(), context.encode(), plaintext)),
                                "sha256")[:_NONCE_BYTES]
        else:
            nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = _AAD_DOMAIN + header.encode() + b"\x00" + name.encode()
        return f"{header}.{_b64(nonce + cipher.encrypt(nonce, plaintext, aad))}"

    def open(self, name: str, envelope: str) -> Any:
        """The value sealed in ``envelope`` as the field ``name`` (``CannotDecrypt`` if it
        does not open)."""
        from cryptography.exceptions import InvalidTag

        found = _ENVELOPE.fullmatch(envelope)
        if found is None:
            raise CannotDecrypt(f"field {name}: not a {ENVELOPE_VERSION} envelope")
        tag, kid, body = found.groups()
        if kid not in self.keys.keys:
            raise CannotDecrypt(f"field {name}: sealed with key {kid}, which the key file does not hold")
        try:
            raw = _unb64(body)
        except (binascii.Error, ValueError):
            raise CannotDecrypt(f"field {name}: the envelope of key {kid} is not base64url") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise CannotDecrypt(f"field {name}: the envelope of key {kid} is too short")
        header = f"{ENVELOPE_VERSION}.{tag}.{kid}"
        aad = _AAD_DOMAIN + header.encode() + b"\x00" + name.encode()
        try:
            plaintext = self._cipher(kid, tag).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise CannotDecrypt(f"field {name}: does not authenticate under key {kid} ({_BY_TAG[tag]}): a "
                                f"different key under that id, or altered") from None
        return orjson.loads(plaintext)

    def seal_record(self, value: Any, context: str = "") -> Any:
        """``value`` (a record's JSON value) with every personal field, at any depth, sealed;
        fields already sealed and ``None`` values are kept."""
        if isinstance(value, list):
            return [self.seal_record(v, context) for v in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():  # per event on the sinks' path: only containers are walked into
            if k in self.fields and v is not None and not is_sealed(v):
                out[k] = self.seal(k, v, context)
            elif isinstance(v, dict | list):
                out[k] = self.seal_record(v, context)
            else:
                out[k] = v
        return out

    def open_record(self, value: Any, name: str = "") -> Any:
        """``value`` with every envelope, at any depth, opened (``CannotDecrypt`` if one
        does not)."""
        if isinstance(value, str):
            return self.open(name, value) if is_sealed(value) else value
        if isinstance(value, dict):
            return {k: self.open_record(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.open_record(v, name) for v in value]
        return value

    def needs_reseal(self, value: Any) -> bool:
        """Whether ``value`` holds an envelope of another key or algorithm than the active."""
        header = f"{ENVELOPE_VERSION}.{ALGORITHMS[self.keys.algorithm]}.{self.keys.active}."
        if isinstance(value, str):
            return is_sealed(value) and not value.startswith(header)
        if isinstance(value, dict):
            return any(self.needs_reseal(v) for v in value.values())
        if isinstance(value, list):
            return any(self.needs_reseal(v) for v in value)
        return False

    def reseal(self, value: Any, context: str = "") -> Any:
        """``value`` with every envelope opened and sealed again with the active key."""
        return self.seal_record(self.open_record(value), context)


def masked(value: Any, mask: str) -> Any:
    """``value`` with every envelope, at any depth, replaced by ``mask`` (for the roles
    that may not see personal fields: no key needed)."""
    if isinstance(value, str):
        return mask if is_sealed(value) else value
    if isinstance(value, dict):
        return {k: masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, mask) for v in value]
    return value
