"""Servers for integration tests: a private Redis server (its own port and directory; by
default nothing kept on disk, or an append-only file fsynced on every write when it must
survive a stop and restart), and a local HTTP endpoint that receives webhooks."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tests.brokers import _wait_for_port, free_port


@dataclass
class RedisServer:
    """A running ``redis-server``. ``pause``/``resume`` freeze it (an outage that keeps its
    connections); ``stop``/``start`` shut it down and bring it back on the same port (with
    ``persistent=True`` its data survives that)."""

    command: list[str]
    port: int
    log: BinaryIO
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Shut the server down (SIGTERM: it flushes its append-only file and exits)."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(30)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc)


@contextmanager
def redis_server(log_dir: Path, persistent: bool = False) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on a free loopback port, killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install -y redis-server` "
                           "(`make test` installs it when missing)")
    port = free_port()
    data = log_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durability, "--dir", str(data)]
    with open(log_dir / f"redis-{port}.log", "wb") as log:
        server = RedisServer(command, port, log)
        try:
            yield server
        finally:
            if server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGCONT)
                server.proc.kill()
                server.proc.wait()


def wait_until(check, timeout: float = 30.0, every: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it is true or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


class Receiver:
    """A local webhook endpoint: fails the first ``fail`` requests with 500, makes every
    ``stall_every``-th request wait ``stall_s`` (past the client's timeout), and keeps what
    arrives by ``Idempotency-Key``; each request's arrival time, headers and body in ``log``;
    failures carry ``Retry-After: retry_after`` if given."""

    def __init__(self, fail: int = 0, stall_every: int = 0, stall_s: float = 0.0, status: int = 500,
                 reply: bytes = b'{"errcode":0,"errmsg":"ok"}', retry_after: str | None = None) -> None:
        self.fail, self.stall_every, self.stall_s, self.status, self.reply = fail, stall_every, stall_s, status, reply
        self.retry_after = retry_after
        self.log: list[tuple[float, dict[str, str], bytes]] = []
        self.requests = 0
        self.received: dict[str, bytes] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    n = receiver.requests
                    receiver.log.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                if n <= receiver.fail:
                    self.send_response(receiver.status)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.end_headers()
                    return
                if receiver.stall_every and n % receiver.stall_every == 0:
                    time.sleep(receiver.stall_s)
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    if key not in receiver.received:
                        receiver.order.append(key)
                    receiver.received[key] = body
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(receiver.reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first: it will retry with the same key

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _redis_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are not installed: `apt-get install -y redis-server` "
                           "(`make test` installs it when missing)")
    return server, cli


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    for proc in procs:
        proc.wait()


@dataclass(frozen=True)
class RedisClusterNodes:
    """A running Redis Cluster of masters without replicas; ``url`` names its first node."""

    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"


@contextmanager
def redis_cluster(log_dir: Path, masters: int = 3, timeout: float = 30.0) -> Iterator[RedisClusterNodes]:
    """A fresh Redis Cluster of ``masters`` ``redis-server --cluster-enabled yes`` on free
    loopback ports (each with its own directory and bus port), its slots spread by
    ``redis-cli --cluster create``; killed on exit. ``RuntimeError`` with the logs' tail if
    it does not reach ``cluster_state:ok`` within ``timeout``."""
    server, cli = _redis_binaries()
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    logs: list[Path] = []
    try:
        for _ in range(masters):
            port, bus = free_port(), free_port()
            data = log_dir / f"redis-cluster-{port}"
            data.mkdir(parents=True, exist_ok=True)
            logs.append(log_dir / f"redis-cluster-{port}.log")
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen(
                    [server, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"),
                     "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", str(data)],
                    stdout=log, stderr=subprocess.STDOUT))
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            _wait_for_port(port, proc)
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                 "--cluster-replicas", "0", "--cluster-yes"],
                                capture_output=True, timeout=timeout, check=False)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}): "
                               f"{(create.stdout + create.stderr).decode(errors='replace')[-2000:]}")

        def ready() -> bool:
            for port in ports:
                info = subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True, timeout=5,
                                      check=False).stdout
                if b"cluster_state:ok" not in info:
                    return False
            return True
        if not wait_until(ready, timeout, every=0.2):
            tails = "\n".join(f"{path.name}: {path.read_bytes()[-500:].decode(errors='replace')}" for path in logs)
            raise RuntimeError(f"the Redis Cluster on {ports} did not reach cluster_state:ok in {timeout}s\n{tails}")
        yield RedisClusterNodes(tuple(ports))
    finally:
        _stop(procs)


@dataclass(frozen=True)
class RedisSentinelSetup:
    """A Redis master watched by one Sentinel under the service ``service``."""

    master_port: int
    sentinel_port: int
    service: str

    @property
    def master_url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port}/0"

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/{db}"


@contextmanager
def redis_sentinel(log_dir: Path, service: str = "crm-master", timeout: float = 30.0) -> Iterator[RedisSentinelSetup]:
    """A fresh ``redis-server`` master and a ``redis-server <conf> --sentinel`` monitoring
    it, on free loopback ports; killed on exit. ``RuntimeError`` if the Sentinel does not
    name the master within ``timeout``."""
    server, cli = _redis_binaries()
    master_port, sentinel_port = free_port(), free_port()
    data = log_dir / f"redis-sentinel-{sentinel_port}"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "sentinel.conf"  # the Sentinel rewrites its configuration file: it must be writable
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {data}\n"
                    f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {service} 5000\n")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(data / "master.log", "wb") as log:
            procs.append(subprocess.Popen([server, "--port", str(master_port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", str(data)],
                                          stdout=log, stderr=subprocess.STDOUT))
        _wait_for_port(master_port, procs[0])
        with open(data / "sentinel.log", "wb") as log:
            procs.append(subprocess.Popen([server, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT))
        _wait_for_port(sentinel_port, procs[1])

        def named() -> bool:
            reply = subprocess.run([cli, "-p", str(sentinel_port), "sentinel", "get-master-addr-by-name", service],
                                   capture_output=True, timeout=5, check=False).stdout
            return str(master_port).encode() in reply
        if not wait_until(named, timeout, every=0.2):
            raise RuntimeError(f"the Sentinel on {sentinel_port} did not name the master of {service} in {timeout}s")
        yield RedisSentinelSetup(master_port, sentinel_port, service)
    finally:
        _stop(procs)
