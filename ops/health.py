"""Readiness of the engine, and the HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` answers 200
once the sources are connected (Kafka: topics listed and this process's partitions assigned,
read by a running dataflow; simulator: started) and every sink built so far is open, and 503
before that, after a stop request (draining) and when a source has stopped; the body says
why. ``/metrics`` is the registry in the Prometheus text format.

>>> import threading
>>> r = Readiness(threading.Event())
>>> r.status()
(False, 'sources not connected')
>>> r.sink_opening("kafka_alerts"); r.sink_opened("kafka_alerts"); r.source_connected()
>>> r.status()
(True, 'ready')
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Readiness:
    """What ``/readyz`` reports; sources and sinks update it from the workers' threads."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._connected = False
        self._finished = False
        self._opening: dict[str, int] = {}

    def source_connected(self) -> None:
        self._connected = True

    def source_finished(self) -> None:
        self._finished = True

    def sink_opening(self, name: str) -> None:
        with self._lock:
            self._opening[name] = self._opening.get(name, 0) + 1

    def sink_opened(self, name: str) -> None:
        with self._lock:
            self._opening[name] -= 1
            if not self._opening[name]:
                del self._opening[name]

    def status(self) -> tuple[bool, str]:
        if self._stop.is_set():
            return False, "draining"
        if self._finished:
            return False, "source finished"
        if not self._connected:
            return False, "sources not connected"
        with self._lock:
            opening = sorted(self._opening)
        if opening:
            return False, f"sinks not open: {', '.join(opening)}"
        return True, "ready"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready, why = self.server.readiness.status()
            self._reply(200 if ready else 503, why.encode() + b"\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: not logged
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, readiness: Readiness) -> None:
        self.registry, self.readiness = registry, readiness
        super().__init__(address, _Handler)


class OpsServer:
    """Serves the endpoints on ``host:port`` from a daemon thread until ``close()``."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._server = _Server((host, port), registry, readiness)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
