"""A private Redis server for integration tests: its own port and directory; by default
nothing kept on disk, or an append-only file fsynced on every write when it must survive a
stop and restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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
