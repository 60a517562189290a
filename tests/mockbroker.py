"""librdkafka's mock cluster, as a Kafka-protocol broker other processes can use.

    python -m tests.mockbroker [--brokers 1]     # prints bootstrap.servers, runs until Ctrl-C

The ``confluent-kafka`` wheel we pin carries librdkafka, whose test mode starts an in-process
cluster on loopback ports when a client is created with ``test.mock.num.brokers``; its
``debug=mock`` log names the address. Clients in other processes connect to it as to any
Kafka (topics, produce, fetch, consumer groups and offset commits, admin ``CreateTopics``).

Limits (it is librdkafka's test fixture, not a broker): everything is in memory and gone
when this process exits; there is no retention, so its logs only grow and its fetches get
slower as they do (keep latency runs short); it answers a fetch that finds nothing only
when ``fetch.wait.max.ms`` has passed, so a consumer's wait is part of every quiet hop, and a
short wait makes it poll, at the cost of a core; there is no replication, transactions are
partial and security is off.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def mock_cluster(brokers: int = 1, timeout: float = 10.0) -> Iterator[str]:
    """A mock cluster of ``brokers`` brokers for the duration of the block; its bootstrap address."""
    from confluent_kafka import Producer

    found: list[str] = []

    class _Address(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = re.search(r"bootstrap\.servers=(\S+)", record.getMessage())
            if match:
                found.append(match.group(1))

    logger = logging.getLogger("tests.mockbroker.librdkafka")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_Address())
    # The cluster lives as long as this client does; its log thread needs polling.
    owner = Producer({"test.mock.num.brokers": brokers, "debug": "mock", "logger": logger})
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            owner.poll(0.1)

    thread = threading.Thread(target=serve, name="mock-cluster", daemon=True)
    thread.start()
    try:
        waited = 0.0
        while not found and waited < timeout:
            stop.wait(0.05)
            waited += 0.05
        if not found:
            raise RuntimeError("librdkafka's mock cluster did not report its address")
        yield found[0]
    finally:
        stop.set()
        thread.join(5)


def mock_topics(bootstrap: str, topics: list[str]) -> int:
    """Create ``topics`` on the mock cluster (it does not answer CreateTopics; a producer's
    metadata request for a topic creates it); how many partitions each has."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    partitions = 0
    for topic in topics:
        partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    return partitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", type=int, default=1)
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with mock_cluster(args.brokers) as bootstrap:
        print(bootstrap, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
