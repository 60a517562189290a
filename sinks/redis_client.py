"""The one way the engine and the dashboard reach Redis: a client for a configured
``schemas.redis_url.RedisEndpoint`` (or a plain URL string), synchronous (``connect``) or
asyncio (``connect_async``).

- ``redis://``, ``rediss://``, ``unix://``: ``redis.Redis`` (``redis.asyncio.Redis``);
- the same with ``cluster``: ``redis.cluster.RedisCluster`` (``redis.asyncio.cluster``),
  which finds every node from the one named and follows slots as they move;
- ``redis+sentinel://``: the master of the service, from ``redis.sentinel.Sentinel``
  (``redis.asyncio.sentinel``): every new connection asks the Sentinels where the master
  is, so a failover is followed (connections to the old master are dropped).

Every caller writes keys of ``schemas.redis_keys``, whose hash tags keep each script,
transaction and multi-key command in one slot, so the same code runs on all three.

It lives in ``sinks/`` because the engine's sinks and source use it and a sink may import
only ``schemas``; the dashboard imports it from here (``tests/test_layering.py``) rather
than keep a second copy that could drift.

A synchronous cluster client reads the cluster's slots when it is made, so it fails at
once if no node answers (``redis.ConnectionError``, as for any unreachable Redis): the
sinks make theirs on their first delivery, which is retried.
"""

from __future__ import annotations

from typing import Any

from schemas.redis_url import RedisEndpoint, endpoint


def _common(timeout_s: float, connect_timeout_s: float | None) -> dict[str, Any]:
    return {"socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s if connect_timeout_s is None else connect_timeout_s}


def connect(target: str | RedisEndpoint, timeout_s: float = 5.0, connect_timeout_s: float | None = None) -> Any:
    """A synchronous client for ``target`` (see the module doc)."""
    import redis
    import redis.cluster
    import redis.sentinel

    where = endpoint(target)
    options = _common(timeout_s, connect_timeout_s)
    if where.is_sentinel:
        s = where.sentinel()
        return redis.sentinel.Sentinel(list(s.hosts), **options).master_for(
            s.service, db=s.db, username=s.username, password=s.password, **options)
    if where.cluster:
        try:
            return redis.cluster.RedisCluster.from_url(where.url, **options)
        except redis.exceptions.RedisClusterException as exc:  # not a RedisError: callers catch those
            raise redis.ConnectionError(f"Redis Cluster at {where}: {exc}") from exc
    return redis.Redis.from_url(where.url, **options)


def connect_async(target: str | RedisEndpoint, timeout_s: float = 5.0,
                  connect_timeout_s: float | None = None) -> Any:
    """An asyncio client for ``target`` (see the module doc); it connects on first use."""
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel

    where = endpoint(target)
    options = _common(timeout_s, connect_timeout_s)
    if where.is_sentinel:
        s = where.sentinel()
        return redis.asyncio.sentinel.Sentinel(list(s.hosts), **options).master_for(
            s.service, db=s.db, username=s.username, password=s.password, **options)
    if where.cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(where.url, **options)
    return redis.asyncio.Redis.from_url(where.url, **options)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (made here) talks to a Redis Cluster: keys of different slots may
    then not be read in one command (``XREAD`` of several streams, ``MGET``)."""
    import redis.asyncio.cluster
    import redis.cluster

    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def load_scripts(client: Any, *scripts: Any) -> None:
    """Load registered ``scripts`` (``client.register_script``) on every master: a
    cluster's pipeline runs ``EVALSHA`` without loading them first, and a master that lost
    its script cache (a restart, a failover) answers ``NOSCRIPT`` until they are loaded."""
    for script in scripts:
        client.script_load(script.script)


async def initialized(client: Any) -> Any:
    """``client`` (from ``connect_async``), a cluster's having read the cluster's slots:
    redis-py's asyncio cluster transactions queue each command on an event loop of their
    own, where a first use (reading the slots) fails, so a client whose first command may
    be a ``MULTI`` is initialised first."""
    import redis

    if is_cluster(client):
        try:
            await client.initialize()
        except redis.exceptions.RedisClusterException as exc:  # not a RedisError: callers catch those
            raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
    return client
