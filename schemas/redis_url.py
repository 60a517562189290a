"""Where Redis is: the configured URL and whether it names a Redis Cluster, checked without
connecting (``sinks.redis_client`` connects; ``config.settings`` checks it at load time).

Three kinds of deployment, one URL setting (``[redis] url``) and one flag (``[redis] cluster``):

- a single server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, as redis-py reads them;
- a Redis Cluster (``cluster = true``): ``redis://`` or ``rediss://`` naming any node, the
  others are discovered;
- a master watched by Sentinels:
  ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``. The
  Sentinels are asked where the master of ``service_name`` is, and asked again after a
  failover. The user and password (percent-encoded) are the master's; the Sentinels are
  reached without a password. A host without a port is on 26379; an IPv6 host is written
  in brackets (``[::1]:26379``).

>>> RedisEndpoint("redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]/crm/2").sentinel()
Sentinels(hosts=(('10.0.0.1', 26379), ('::1', 26379)), service='crm', db=2, username=None, password='s@cret')
>>> RedisEndpoint("redis+sentinel://10.0.0.1:26379")
Traceback (most recent call last):
...
schemas.redis_url.InvalidRedisUrl: a redis+sentinel:// URL names the master's service after the hosts: redis+sentinel://host:port[,host:port...]/service_name[/db]
>>> str(RedisEndpoint("redis://:pw@cache:6379/0", cluster=True))
'redis://***@cache:6379/0 (cluster)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379
PLAIN_SCHEMES: Final = ("redis", "rediss", "unix")
_FORM: Final = f"{SENTINEL_SCHEME}://host:port[,host:port...]/service_name[/db]"


class InvalidRedisUrl(ValueError):
    """A Redis URL that cannot be used (the message says why, never the password)."""


class Sentinels(NamedTuple):
    """A ``redis+sentinel://`` URL, read."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


def _host_port(item: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise InvalidRedisUrl(f"a Sentinel host {item!r} is not [address] or [address]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
        if not host or ":" in port_text:
            raise InvalidRedisUrl(f"a Sentinel host {item!r} is not host or host:port")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRedisUrl(f"a Sentinel host {item!r} has no valid port (1..65535)")
    return host, int(port_text)


def parse_sentinel(url: str) -> Sentinels:
    """The hosts, service, database and credentials of a ``redis+sentinel://`` URL."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME or not sep:
        raise InvalidRedisUrl(f"not a {SENTINEL_SCHEME}:// URL")
    if "?" in rest or "#" in rest:
        raise InvalidRedisUrl(f"a {SENTINEL_SCHEME}:// URL takes no query or fragment: {_FORM}")
    authority, _, path = rest.partition("/")
    credentials, at, hosts_text = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        if not colon:
            raise InvalidRedisUrl(f"the credentials of a {SENTINEL_SCHEME}:// URL are [user]:password@")
        username, password = unquote(user) or None, unquote(secret)
    if not hosts_text:
        raise InvalidRedisUrl(f"a {SENTINEL_SCHEME}:// URL names at least one Sentinel: {_FORM}")
    hosts = tuple(_host_port(item) for item in hosts_text.split(","))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise InvalidRedisUrl(f"a {SENTINEL_SCHEME}:// URL names the master's service after the hosts: {_FORM}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise InvalidRedisUrl(f"after the service name a {SENTINEL_SCHEME}:// URL takes only a database "
                              f"number: {_FORM}")
    return Sentinels(hosts, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, username, password)


def masked(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return scheme + sep + authority + slash + path


@dataclass(frozen=True)
class RedisEndpoint:
    """A checked Redis URL and whether it names a Redis Cluster (``InvalidRedisUrl`` if it
    cannot be used). Printed with its credentials masked."""

    url: str
    cluster: bool = False

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme.lower() if "://" in self.url else ""
        if scheme == SENTINEL_SCHEME:
            if self.cluster:
                raise InvalidRedisUrl("a Redis Cluster is not reached through Sentinels: give one of its nodes "
                                      "as a redis:// or rediss:// URL")
            parse_sentinel(self.url)
        elif scheme not in PLAIN_SCHEMES:
            raise InvalidRedisUrl(f"a Redis URL starts with redis://, rediss://, unix:// or {SENTINEL_SCHEME}://, "
                                  f"not {scheme + '://' if scheme else 'a URL without a scheme'}")
        elif self.cluster and scheme == "unix":
            raise InvalidRedisUrl("a Redis Cluster is reached over TCP: give one of its nodes as a redis:// or "
                                  "rediss:// URL")

    @property
    def is_sentinel(self) -> bool:
        return self.url.lower().startswith(SENTINEL_SCHEME + "://")

    def sentinel(self) -> Sentinels:
        """The Sentinel URL, read (``InvalidRedisUrl`` if this is not one)."""
        return parse_sentinel(self.url)

    def __str__(self) -> str:
        return masked(self.url) + (" (cluster)" if self.cluster else "")

    def __repr__(self) -> str:
        return f"RedisEndpoint({masked(self.url)!r}, cluster={self.cluster})"


def endpoint(target: str | RedisEndpoint) -> RedisEndpoint:
    """``target`` as an endpoint (a plain URL string is a single server or Sentinels)."""
    return target if isinstance(target, RedisEndpoint) else RedisEndpoint(target)
