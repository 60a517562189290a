"""A private Redis server for integration tests: its own port, nothing kept on disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.brokers import _wait_for_port, free_port


@dataclass
class RedisServer:
    """A running ``redis-server``; ``pause``/``resume`` freeze it (an outage that keeps its data)."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextmanager
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on a free loopback port, killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install -y redis-server` "
                           "(`make test` installs it when missing)")
    port = free_port()
    log = open(log_dir / f"redis-{port}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(log_dir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc)
        yield RedisServer(proc, port)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
        log.close()


def wait_until(check, timeout: float = 30.0, every: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it is true or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())
