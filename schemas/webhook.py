"""The webhook's request signature, the contract a receiver verifies (as payment webhooks do).

Each request carries ``X-CRM-Timestamp`` (Unix seconds when it was sent) and
``X-CRM-Signature: v1=<hex>``, the HMAC-SHA256 under the shared secret of the timestamp, a
dot and the raw body. A receiver recomputes it over the bytes it received, compares in
constant time and refuses a timestamp too far from its clock (a replayed request).

>>> headers = sign(b"secret", b'{"alert_id":"al-1"}', now=1767225600)
>>> headers["X-CRM-Timestamp"], headers["X-CRM-Signature"][:10]
('1767225600', 'v1=b02f431')
>>> verify(b"secret", headers["X-CRM-Timestamp"], b'{"alert_id":"al-1"}', headers["X-CRM-Signature"], now=1767225700)
True
>>> verify(b"secret", headers["X-CRM-Timestamp"], b'{"alert_id":"al-2"}', headers["X-CRM-Signature"], now=1767225700)
False
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

TIMESTAMP_HEADER: Final = "X-CRM-Timestamp"
SIGNATURE_HEADER: Final = "X-CRM-Signature"
VERSION: Final = "v1"


def _mac(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers of a signed request with ``body``, sent at ``now``."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: f"{VERSION}={_mac(secret, timestamp, body)}"}


def verify(secret: bytes, timestamp: str | None, body: bytes, signature: str | None,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Whether ``signature`` signs ``body`` at ``timestamp`` under ``secret``, and the
    timestamp is within ``tolerance_s`` of ``now``."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    version, _, mac = signature.partition("=")
    return version == VERSION and hmac.compare_digest(mac, _mac(secret, timestamp, body))
