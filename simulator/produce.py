"""Send the simulator's stream to the engine's Kafka input topics (``python run.py produce``).

Each event goes to the topic of its kind (``[kafka]`` topics), keyed by customer so that one
customer's events stay in order, at ``rate`` events per second (``simulator.live.paced``).
Used as the load generator of the deploy stack and for live demos.
"""

from __future__ import annotations

import logging
import math
import threading
from itertools import islice
from typing import TYPE_CHECKING

import orjson

from simulator import SimulatorConfig, generate
from simulator.live import paced

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)


def create_missing_topics(client: dict[str, str | int | float | bool], topics: list[str], partitions: int) -> None:
    """Create those of ``topics`` that do not exist, with ``partitions`` partitions each."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client)
    existing = set(admin.list_topics(timeout=30).topics)
    missing = [name for name in dict.fromkeys(topics) if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics([NewTopic(n, partitions) for n in missing]).items():
        future.result(30)
        log.info("created topic %s with %d partitions", name, partitions, extra={"topic": name})


def produce_simulation(settings: Settings, rate: float, max_events: int | None = None,
                       stop: threading.Event | None = None, customers: int | None = None,
                       seed: int | None = None, create_partitions: int = 0) -> int:
    """Produce the simulator's events until ``max_events``, the stream's end or ``stop``;
    return how many were acknowledged by the broker."""
    from confluent_kafka import Producer

    k, sim = settings.kafka, settings.simulator
    client = k.client_config()
    if create_partitions > 0:
        create_missing_topics(client, [*k.topics(), k.alerts_topic, k.prompts_topic, k.dead_letter_topic],
                              create_partitions)
    topic_of = {"transaction": k.transactions_topic, "app": k.app_topic, "feedback": k.feedback_topic,
                "profile": k.profile_topic}
    delivered = [0, 0]

    def on_delivery(err: object, _msg: object) -> None:
        delivered[err is not None] += 1

    producer = Producer({"linger.ms": 5, **k.producer_config()})
    events = generate(SimulatorConfig(customers=customers or sim.customers, days=sim.days,
                                      seed=sim.seed if seed is None else seed, fraud_rate=sim.fraud_rate))
    stream = paced(islice(events, max_events), rate if rate > 0 else math.inf)
    for event in stream:
        if stop is not None and stop.is_set():
            break
        while True:
            try:
                producer.produce(topic_of[event["kind"]], orjson.dumps(event), event["customer_id"].encode(),
                                 on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: wait for deliveries
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(30)
    if left or delivered[1]:
        log.error("%d events failed, %d undelivered", delivered[1], left)
    return delivered[0]
