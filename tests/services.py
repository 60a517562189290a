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
