"""The engine's Prometheus metrics: one ``EngineMetrics`` per process, on an injected registry.

Names follow the client's conventions: ``crm_engine_<subsystem>_<name>_<unit>``, counters end
in ``_total``, durations are ``_seconds``. Every label is declared up front and pre-initialised
with the values it can take (kinds, topics, reason codes, alert types and severities, steps,
sinks), and no label ever carries a customer or event id.

Workers are threads of one process: they share the process's registry (the client's metrics
are thread-safe), so a process exports the sum over its workers. Several processes (a Bytewax
cluster) each serve their own ``/metrics`` and are scraped one by one; sums and rates across
processes are taken in PromQL (``sum without (instance, pod) (...)``).

The dataflow pays for metrics only when they are on: ``flows.dataflow.build_flow`` wires the
observing steps and the step timers only when it is given an ``EngineMetrics``. The hooks
take plain per-event facts (kinds, source partitions, scores, timestamps) and output records
(alerts, dead letters), never the dataflow's own items: ``flows.observing`` extracts them.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> metrics = EngineMetrics(registry, sources=("transactions",), sinks=("kafka_alerts",))
>>> registry.get_sample_value("crm_engine_source_events_total",
...                           {"kind": "transaction", "source": "transactions"})
0.0
>>> metrics.events_read({("transaction", "transactions#3"): 2})
>>> metrics.scored_batch([(0.9, True, 1.7e9, None, None)], [("fraud", 0.9, True)])
>>> registry.get_sample_value("crm_engine_source_events_total",
...                           {"kind": "transaction", "source": "transactions"})
2.0
>>> registry.get_sample_value("crm_engine_model_labelled_outcomes_total", {"outcome": "true_positive"})
1.0
>>> classify_reason("missing required field 'customer_id'")
'missing_field'
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import tomllib
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from platform import python_version
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from schemas.events import KIND_FIELDS
from schemas.outputs import Alert, DeadLetter, LifecycleChange, ModelChange, ModelReport, Prompt

NAMESPACE: Final = "crm_engine"
#: Event-to-alert latency buckets (seconds), from 0.5 ms to 5 minutes.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Time one step spends on one batch of one key.
STEP_BUCKETS: Final = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                       0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SCORE_BUCKETS: Final = tuple(round(0.05 * i, 2) for i in range(1, 21))
KINDS: Final = tuple(KIND_FIELDS)
ALERT_TYPES: Final = ("suspicious_transaction", "account_takeover", "aml_pattern", "churn_risk",
                      "complaint_escalation", "fairness_drift")
#: Next-best action's fairness figures (detectors.fairness): what is counted per group, and judged.
FAIRNESS_OUTCOMES: Final = ("eligible", "prompted", "accepted", "converted")
FAIRNESS_METRICS: Final = ("exposure", "acceptance", "conversion")
SEVERITIES: Final = ("low", "medium", "high", "critical")
FEEDBACK_LABELS: Final = ("fraud", "legit", "churned", "retained", "nba_accepted", "nba_dismissed",
                          "nba_converted")
STEPS: Final = ("customer_profile", "shared_scoring", "customer_view")
OUTCOMES: Final = ("true_positive", "false_positive", "false_negative", "true_negative")
LATENCY_SINCE: Final = ("source", "read", "event")
#: Why the alert lifecycle emitted no new alert for a trigger, by the change it recorded:
#: a repeat of an open alert, merged into the customer's open group (emitted as a revision of
#: the group's alert), or snoozed.
SUPPRESSION_REASONS: Final = {"deduplicated": "deduplicated", "grouped": "grouped", "suppressed": "snoozed"}
#: The engine's state snapshot (pickled shard): from 1 ms to 1 minute.
SNAPSHOT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                           60.0)

#: Dead-letter reason codes, in the order they are tried (the first match wins).
_REASON_RULES: Final = (
    ("step_failed", ("failed on event",)),
    ("future_event", ("max_future_skew_s",)),
    ("out_of_bounds", ("the configured range", "the configured max_amount")),
    ("not_utf8", ("not valid UTF-8",)),
    ("invalid_json", ("invalid JSON",)),
    ("not_an_object", ("expected a JSON object",)),
    ("unknown_kind", ("unknown kind",)),
    ("missing_field", ("missing required field",)),
    ("bad_timestamp", ("field 'ts':",)),
    ("non_finite", ("not a finite number",)),
    ("wrong_type", (": expected a",)),
    ("invalid_value", ("is not one of", "length must be", "is below", "is above")),
)
DEAD_LETTER_REASONS: Final = (*(code for code, _ in _REASON_RULES), "other")


def classify_reason(reason: str) -> str:
    """A dead letter's reason text as one of ``DEAD_LETTER_REASONS`` (a bounded label).

    >>> classify_reason("field 'amount': not a finite number")
    'non_finite'
    >>> classify_reason("the broker ate it")
    'other'
    """
    for code, needles in _REASON_RULES:
        if any(needle in reason for needle in needles):
            return code
    return "other"


def source_of(part: str) -> str:
    """The source label of a source partition: its topic (``transactions#3``), or its name."""
    return part.partition("#")[0]


def project_version() -> str:
    """The project's version, from ``pyproject.toml`` (the one place it is written)."""
    try:
        project = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text())
        return str(project["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


class ThreadTally:
    """One thread's observations of one labelled histogram: bucket counts (the last is +Inf),
    their sum, and a count of items (for step timers)."""

    __slots__ = ("counts", "items", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)
        self.sum = 0.0
        self.items = 0


class FastHistogram:
    """A histogram for the per-event hot path, exported exactly like the client's.

    The client's ``Histogram.observe`` takes locks per value (several microseconds); here
    each worker thread adds to its own ``ThreadTally`` without locks, and a scrape sums the
    threads' tallies. ``items_name`` also exports a counter of the items passed to
    ``observe`` (a step's items, next to its batch durations).

    >>> registry = CollectorRegistry()
    >>> h = FastHistogram("crm_engine_x_seconds", "x", (0.1, 1.0), registry, ["step"])
    >>> h.labels("a").observe(0.5); h.labels("a").observe(3.0)
    >>> registry.get_sample_value("crm_engine_x_seconds_bucket", {"step": "a", "le": "1.0"})
    1.0
    >>> registry.get_sample_value("crm_engine_x_seconds_count", {"step": "a"})
    2.0
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry,
                 labelnames: Iterable[str] = (), items_name: str | None = None, items_doc: str = "") -> None:
        self.name, self._doc = name, documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._labelnames = tuple(labelnames)
        self._items_name, self._items_doc = items_name, items_doc
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = HistogramChild(self._bounds)
            return child

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        return list(self._families())

    def _families(self) -> Iterable[Metric]:
        histogram = HistogramMetricFamily(self.name, self._doc, labels=self._labelnames)
        items = CounterMetricFamily(self._items_name, self._items_doc, labels=self._labelnames) \
            if self._items_name else None
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            counts, total, n_items = child.totals()
            cumulative, running = [], 0
            for le, count in zip(les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            histogram.add_metric(list(values), cumulative, total)
            if items is not None:
                items.add_metric(list(values), float(n_items))
        yield histogram
        if items is not None:
            yield items


class HistogramChild:
    """One label set of a ``FastHistogram``: a tally per thread."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = self.bounds = bounds
        self._local = threading.local()
        self._tallies: list[ThreadTally] = []
        self._lock = threading.Lock()

    def tally(self) -> ThreadTally:
        """This thread's tally: only this thread may add to it."""
        try:
            tally: ThreadTally = self._local.tally
        except AttributeError:
            tally = self._local.tally = ThreadTally(len(self._bounds))
            with self._lock:
                self._tallies.append(tally)
        return tally

    def observe(self, value: float, items: int = 0) -> None:
        tally = self.tally()
        tally.counts[bisect_left(self._bounds, value)] += 1
        tally.sum += value
        tally.items += items

    def observer(self) -> Callable[[float], None]:
        """A fast ``observe`` bound to this thread's tally, for a loop over one batch."""
        tally, bounds = self.tally(), self._bounds
        counts = tally.counts

        def observe(value: float) -> None:
            counts[bisect_left(bounds, value)] += 1
            tally.sum += value
        return observe

    def totals(self) -> tuple[list[int], float, int]:
        with self._lock:
            tallies = list(self._tallies)
        counts = [0] * (len(self._bounds) + 1)
        total, items = 0.0, 0
        for tally in tallies:
            for i, count in enumerate(tally.counts):
                counts[i] += count
            total += tally.sum
            items += tally.items
        return counts, total, items


class RecoveryStore:
    """A collector of the recovery store's size: the bytes of the recovery partitions in
    ``db_dir`` (the files matching ``pattern`` and their SQLite journals), read from the
    file system at each scrape (nothing on the dataflow's path).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "part-0.sqlite3").write_bytes(b"x" * 4096)
    >>> registry = CollectorRegistry(); _ = RecoveryStore(d, "part-*.sqlite3", registry)
    >>> registry.get_sample_value("crm_engine_recovery_store_size_bytes")
    4096.0
    """

    JOURNALS: Final = ("-wal", "-shm", "-journal")

    def __init__(self, db_dir: Path, pattern: str, registry: CollectorRegistry) -> None:
        self._dir, self._pattern = db_dir, pattern
        registry.register(self)

    def size_bytes(self) -> int:
        total = 0
        for part in self._dir.glob(self._pattern):
            for path in (part, *(part.with_name(part.name + suffix) for suffix in self.JOURNALS)):
                with contextlib.suppress(FileNotFoundError):  # no journal, or a partition just replaced
                    total += path.stat().st_size
        return total

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(f"{NAMESPACE}_recovery_store_size_bytes", self._doc)]

    def collect(self) -> list[Metric]:
        return [GaugeMetricFamily(f"{NAMESPACE}_recovery_store_size_bytes", self._doc,
                                  value=float(self.size_bytes()))]

    _doc = "Bytes of this process's recovery partitions (SQLite files and journals) in the recovery directory."


class SinkMetrics:
    """What a sink reports: records written, errors, retries, records buffered (of its
    capacity), delivery latencies and records lost.

    The Prometheus implementation of the sinks' own ``sinks.base.SinkReport`` protocol (by its
    shape: the sinks do not know it). A sink receives one at construction or through
    ``attach_metrics`` (``EngineMetrics.sink(name)``); ``SinkMetrics.off()`` counts nothing.
    """

    def __init__(self, records: Any = None, errors: Any = None, retries: Any = None,
                 buffered: Any = None, lost: Any = None, capacity: Any = None,
                 latency: HistogramChild | None = None) -> None:
        self._records, self._errors, self._retries, self._buffered = records, errors, retries, buffered
        self._lost, self._capacity, self._latency = lost, capacity, latency

    @classmethod
    def off(cls) -> SinkMetrics:
        return cls()

    def written(self, n: int) -> None:
        if self._records is not None and n:
            self._records.inc(n)

    def error(self, n: int = 1) -> None:
        """A record that could not be delivered (or a failed write)."""
        if self._errors is not None:
            self._errors.inc(n)

    def retry(self, n: int = 1) -> None:
        """A write attempted again (back-pressure, a transient error)."""
        if self._retries is not None:
            self._retries.inc(n)

    def buffer_depth(self, n: int) -> None:
        """Records accepted by the sink and not yet delivered."""
        if self._buffered is not None:
            self._buffered.set(n)

    def buffer_capacity(self, n: int) -> None:
        """The most records the sink holds undelivered; 0 for a sink without a buffer."""
        if self._capacity is not None:
            self._capacity.set(n)

    def delivered(self, latencies_s: list[float]) -> None:
        """Records confirmed delivered, each with its seconds since ``write_batch`` (one call
        per batch of confirmations: a ``FastHistogram``, no lock per record)."""
        if self._latency is not None and latencies_s:
            observe = self._latency.observer()
            for seconds in latencies_s:
                observe(seconds)

    def lost(self, n: int = 1) -> None:
        """Records neither delivered nor stored in the sink's dead letters (their file could
        not be written)."""
        if self._lost is not None:
            self._lost.inc(n)


class EngineMetrics:
    """Every metric the engine exports, registered on ``registry`` (never the global one).

    ``sources`` are the source labels (topics, or ``simulator``); ``sinks`` the sink names;
    ``alert_threshold`` the fraud score at which online accuracy counts a prediction as fraud.
    """

    def __init__(self, registry: CollectorRegistry, sources: Iterable[str] = (), sinks: Iterable[str] = (),
                 alert_threshold: float = 0.6) -> None:
        self.registry = registry
        self.alert_threshold = alert_threshold
        ns = NAMESPACE
        # The process's own signals (process_resident_memory_bytes, process_cpu_seconds_total,
        # process_open_fds, process_start_time_seconds, python_gc_*, python_info), and no
        # `_created` series beside every counter and histogram (nothing here reads them).
        disable_created_metrics()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Info("build", "Engine build: version, Python and Bytewax versions.", namespace=ns,
             registry=registry).info({"version": project_version(), "python": python_version(),
                                      "bytewax": metadata.version("bytewax")})
        self.events = Counter("events", "Valid events consumed, by kind and source (topic).",
                              ["kind", "source"], namespace=ns, subsystem="source", registry=registry)
        self.dead_letters = Counter("dead_letters", "Inputs rejected to the dead-letter output, by reason.",
                                    ["reason"], namespace=ns, registry=registry)
        self.step_failures = Counter("failures", "Events whose processing raised in a step (each is "
                                     "dead-lettered and the engine goes on), by step.", ["step"], namespace=ns,
                                     subsystem="step", registry=registry)
        self.lag = Gauge("consumer_lag", "Messages in the partition not yet read (high watermark - position).",
                         ["topic", "partition"], namespace=ns, subsystem="source", unit="messages",
                         registry=registry)
        self.alerts = Counter("alerts", "Alerts emitted to the sinks (new alerts and their revisions, after "
                              "de-duplication and grouping), by type and severity.", ["type", "severity"],
                              namespace=ns, registry=registry)
        self.alert_latency = FastHistogram(
            f"{ns}_alert_latency_seconds", "Event-to-alert latency: from the event's Kafka timestamp "
            "(since=source), from when the engine read it off the broker (since=read: the engine's own "
            "share) or from its own ts (since=event) to the alert decided.", LATENCY_BUCKETS, registry,
            ["since"])
        self.scoring_latency = FastHistogram(
            f"{ns}_scoring_latency_seconds", "From a transaction's Kafka timestamp to its score.",
            LATENCY_BUCKETS, registry)
        self.step_duration = FastHistogram(
            f"{ns}_step_batch_duration_seconds", "Time one batch of one shard spends in a stage of the engine.",
            STEP_BUCKETS, registry, ["step"], items_name=f"{ns}_step_items", items_doc="Events processed by a stage.")
        self.last_poll = Gauge("last_poll_timestamp", "When a worker last polled its sources (Unix time, "
                               "updated at most every second): it stops while the dataflow is stuck, even "
                               "though the HTTP endpoints still answer.", namespace=ns, subsystem="source",
                               unit="seconds", registry=registry)
        self.customers = Gauge("customers_tracked", "Customers with state in this process.", namespace=ns,
                               registry=registry)
        self.scores = FastHistogram(f"{ns}_model_fraud_score", "Fraud score of every scored transaction.",
                                    SCORE_BUCKETS, registry)
        self.feedback = Counter("feedback", "Feedback events received, by label.", ["label"], namespace=ns,
                                subsystem="model", registry=registry)
        self.outcomes = Counter(
            "labelled_outcomes", "Labelled transactions by outcome at the alert threshold "
            "(positive = fraud_score >= threshold; true = the label agrees).", ["outcome"], namespace=ns,
            subsystem="model", registry=registry)
        self.labelled_scores = FastHistogram(f"{ns}_model_labelled_score",
                                             "Fraud score a labelled transaction had, by label.", SCORE_BUCKETS,
                                             registry, ["label"])
        self.model_auc = Gauge("prequential_auc", "Each fraud model's ROC AUC over the last labels (the "
                               "same labels for every model), at the last evaluation.", ["model"], namespace=ns,
                               subsystem="model", registry=registry)
        self.model_ap = Gauge("prequential_average_precision", "Each fraud model's average precision over "
                              "the last labels, at the last evaluation.", ["model"], namespace=ns,
                              subsystem="model", registry=registry)
        self.model_labels = Gauge("prequential_labels", "Labels (and, frauds=\"true\", frauds among them) "
                                  "each model was evaluated on at the last evaluation.", ["model", "frauds"],
                                  namespace=ns, subsystem="model", unit="labels", registry=registry)
        self.champion = Gauge("champion", "1 for the fraud model whose score decides alerts, 0 for the others.",
                              ["model"], namespace=ns, subsystem="model", registry=registry)
        self.champion_changes = Counter("champion_changes", "Changes of champion fraud model, by action "
                                        "(promoted by the engine's rule, or configured).", ["action"],
                                        namespace=ns, subsystem="model", registry=registry)
        labels = ("records", "Records handed to a sink."), ("errors", "Records a sink failed to deliver."), \
            ("retries", "Writes a sink attempted again (back-pressure, transient errors)."), \
            ("lost", "Records a sink could neither deliver nor store in its dead letters.")
        self._sink_counters = {name: Counter(name, text, ["sink"], namespace=ns, subsystem="sink",
                                             registry=registry) for name, text in labels}
        self.prompts = Counter("prompts", "Next-best-action prompts emitted to RMs, by action (catalogue id) and "
                               "trigger type.", ["action", "trigger"], namespace=ns, subsystem="nba",
                               registry=registry)
        self.fairness = Counter(
            "fairness", "Next-best action per customer group (dimension: segment, age_band, gender, city_tier; "
            "bounded values, `other`/`unknown`), in event time: eligible = customers seen at a trigger moment "
            "(once per fairness window), prompted, accepted, converted.", ["dimension", "group", "outcome"],
            namespace=ns, subsystem="nba", registry=registry)
        self.fairness_ratio = Gauge(
            "fairness_ratio", "At the last closed fairness window: each judged group's exposure (prompts per "
            "eligible customer), acceptance or conversion rate over the best-served group's of its dimension.",
            ["dimension", "group", "metric"], namespace=ns, subsystem="nba", registry=registry)
        self.fairness_breaches = Gauge(
            "fairness_breaches", "At the last closed fairness window: groups whose ratio is under the configured "
            "threshold (the four-fifths rule by default), per dimension and metric.", ["dimension", "metric"],
            namespace=ns, subsystem="nba", registry=registry)
        self.suppressed = Counter("suppressed", "Triggered alerts the lifecycle emitted no new alert for, by "
                                  "alert type and reason: deduplicated (a repeat of an open alert), grouped "
                                  "(merged into the customer's open group, emitted as a revision), snoozed.",
                                  ["type", "reason"], namespace=ns, subsystem="alerts", registry=registry)
        self.snapshot_duration = FastHistogram(
            f"{ns}_snapshot_duration_seconds", "Time to serialise the engine's state (the shard: customers and "
            "models) for a recovery snapshot, at the end of each epoch that touched it.", SNAPSHOT_BUCKETS,
            registry)
        self.snapshot_size = Gauge("size", "Size of the engine's last state snapshot (pickled), before Bytewax "
                                   "writes it to the recovery store.", namespace=ns, subsystem="snapshot",
                                   unit="bytes", registry=registry)
        self.sink_buffered = Gauge("buffered", "Records accepted by a sink and not yet delivered.", ["sink"],
                                   namespace=ns, subsystem="sink", unit="records", registry=registry)
        self.sink_capacity = Gauge("buffer_capacity", "The most records a sink holds undelivered before it "
                                   "dead-letters (Redis, webhook, audit) or waits (Kafka); 0: no buffer, a record "
                                   "is delivered when the write returns.", ["sink"], namespace=ns,
                                   subsystem="sink", unit="records", registry=registry)
        self.sink_latency = FastHistogram(
            f"{ns}_sink_delivery_latency_seconds", "From a record handed to a sink to its confirmed delivery "
            "(Kafka: the broker's acknowledgement; Redis, webhook: the write succeeded, retries included; files, "
            "console: the write returned).", LATENCY_BUCKETS, registry, ["sink"])
        self._init_labels(tuple(sources), tuple(sinks))
        self._events_by: dict[tuple[str, str], Any] = {}
        self._dead_by = {code: self.dead_letters.labels(code) for code in DEAD_LETTER_REASONS}
        self._alerts_by = {(t, s): self.alerts.labels(t, s) for t in ALERT_TYPES for s in SEVERITIES}
        self._latency_source = self.alert_latency.labels("source")
        self._latency_read = self.alert_latency.labels("read")
        self._latency_event = self.alert_latency.labels("event")
        self._feedback_by = {label: self.feedback.labels(label) for label in FEEDBACK_LABELS}
        self._stage_timers = {stage: self.step_duration.labels(stage) for stage in STEPS}
        self._prompts_by: dict[tuple[str, str], Any] = {}
        self._fairness_by: dict[tuple[str, str, str], Any] = {}
        self._ratios_set: set[tuple[str, str, str]] = set()
        self._breach_keys: set[tuple[str, str]] = set()
        self._suppressed_by = {(t, change): self.suppressed.labels(t, reason) for t in ALERT_TYPES
                               for change, reason in SUPPRESSION_REASONS.items()}
        self._snapshot_timer = self.snapshot_duration.labels()
        self._recovery_store: RecoveryStore | None = None

    def _init_labels(self, sources: tuple[str, ...], sinks: tuple[str, ...]) -> None:
        for kind in KINDS:
            for source in sources:
                self.events.labels(kind, source)
        for code in DEAD_LETTER_REASONS:
            self.dead_letters.labels(code)
        for since in LATENCY_SINCE:
            self.alert_latency.labels(since)
        for step in STEPS:
            self.step_duration.labels(step)
            self.step_failures.labels(step)
        self.scores.labels()
        self.scoring_latency.labels()
        for label in FEEDBACK_LABELS:
            self.feedback.labels(label)
        for action in ("promoted", "configured"):
            self.champion_changes.labels(action)
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)
        for label in ("fraud", "legit"):
            self.labelled_scores.labels(label)
        for sink in sinks:
            self.sink(sink)
        for t in ALERT_TYPES:
            for reason in SUPPRESSION_REASONS.values():
                self.suppressed.labels(t, reason)

    def expect_prompts(self, actions: Iterable[str], triggers: Iterable[str]) -> None:
        """Export every (action, trigger) pair of the catalogue at zero from the start."""
        for action in actions:
            for trigger in triggers:
                self._prompt_counter(action, trigger)

    def expect_fairness(self, groups: Mapping[str, Iterable[str]]) -> None:
        """Export every (dimension, group) of the fairness figures at zero from the start;
        ``groups``: each dimension's values (``FairnessParams.values``)."""
        for dimension, values in groups.items():
            for value in values:
                for outcome in FAIRNESS_OUTCOMES:
                    self._fairness_counter((dimension, value, outcome))
            for metric in FAIRNESS_METRICS:
                self.fairness_breaches.labels(dimension, metric).set(0)
                self._breach_keys.add((dimension, metric))

    def _fairness_counter(self, key: tuple[str, str, str]) -> Any:
        child = self._fairness_by.get(key)
        if child is None:
            child = self._fairness_by[key] = self.fairness.labels(*key)
        return child

    def fairness_counted(self, counts: Mapping[tuple[str, str, str], int],
                         ratios: list[tuple[str, str, str, float, bool]] | None) -> None:
        """The engine's fairness counts of a batch and, when a window was judged, its
        ratios (a group no longer judged leaves the ratio gauge) and breaches."""
        for key, n in counts.items():
            self._fairness_counter(key).inc(n)
        if ratios is None:
            return
        now: set[tuple[str, str, str]] = set()
        breaches: dict[tuple[str, str], int] = {}
        for dimension, group, metric, ratio, breached in ratios:
            self.fairness_ratio.labels(dimension, group, metric).set(ratio)
            now.add((dimension, group, metric))
            breaches[(dimension, metric)] = breaches.get((dimension, metric), 0) + breached
        for gone in self._ratios_set - now:
            self.fairness_ratio.remove(*gone)
        self._ratios_set = now
        self._breach_keys |= set(breaches)
        for pair in self._breach_keys:  # a dimension not judged this time has no breach now
            self.fairness_breaches.labels(*pair).set(breaches.get(pair, 0))

    def _prompt_counter(self, action: str, trigger: str) -> Any:
        child = self._prompts_by.get((action, trigger))
        if child is None:
            child = self._prompts_by[(action, trigger)] = self.prompts.labels(action, trigger)
        return child

    # -- hooks for the dataflow: plain per-event facts and output records --------------------
    # They know nothing of the items that travel between the dataflow's steps: the flows
    # extract the facts (``flows.observing``) and call them once per batch.

    def events_read(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Count valid events read from the sources: ``counts[(kind, part)]`` events of
        ``kind`` from source partition ``part`` (``topic#3``, or a source's name), counted
        under its source label (``source_of(part)``)."""
        for (kind, part), n in counts.items():
            child = self._events_by.get((kind, part))
            if child is None:
                child = self._events_by[(kind, part)] = self.events.labels(kind, source_of(part))
            child.inc(n)

    def input_rejected(self, letters: Iterable[DeadLetter]) -> None:
        """Count the dead letters of input that is not processed, by reason."""
        dead: Tally[str] = Tally(classify_reason(letter.reason) for letter in letters)
        for code, n in dead.items():
            self._dead_by[code].inc(n)

    def observe_failures(self, batch: list[DeadLetter]) -> list[DeadLetter]:
        """Count the events that failed in a step (dead letters by reason, failures by step)."""
        for letter in batch:
            self._dead_by["step_failed"].inc()
            step = letter.source.get("step")
            if step in STEPS:
                self.step_failures.labels(step).inc()
        return batch

    def scored_batch(self, scored: list[tuple[float, bool, float, float | None, float | None]],
                     feedback: list[tuple[str, float | None, bool]]) -> None:
        """Alerts, latency and model health from a batch the engine processed (the
        ``engine.shard.Observer`` protocol): each scored transaction ``(fraud_score,
        alerted, event time, source time, read time)``, each feedback event ``(label, the
        score its transaction had or None, whether the label says fraud)``."""
        now = time.time()
        threshold = self.alert_threshold
        observe_score = self.scores.labels().observer()
        scoring_latency = self.scoring_latency.labels().observer()
        for fraud_score, alerted, event_t, source_time, read_at in scored:
            observe_score(fraud_score)
            if source_time is not None:
                scoring_latency(max(0.0, now - source_time))
            if alerted:  # an alert decided (the lifecycle may still merge it)
                if source_time is not None:
                    self._latency_source.observe(max(0.0, now - source_time))
                if read_at is not None:
                    self._latency_read.observe(max(0.0, now - read_at))
                self._latency_event.observe(max(0.0, now - event_t))
        for label, labelled_score, is_fraud in feedback:
            child = self._feedback_by.get(label)
            if child is not None:
                child.inc()
            if labelled_score is not None:
                positive = labelled_score >= threshold
                outcome = ("true_" if positive == is_fraud else "false_") + ("positive" if positive else "negative")
                self.outcomes.labels(outcome).inc()
                self.labelled_scores.labels("fraud" if is_fraud else "legit").observe(labelled_score)

    def stage_times(self, seconds: tuple[float, float, float], items: int) -> None:
        """The time one batch spent in each stage of the engine (``STEPS``)."""
        for stage, elapsed in zip(STEPS, seconds, strict=True):
            self._stage_timers[stage].observe(elapsed, items)

    def customers_added(self, n: int) -> None:
        """``n`` customers got state in this process (new, or resumed from a snapshot)."""
        self.customers.inc(n)

    def observe_alerts(self, batch: list[Alert]) -> list[Alert]:
        """Count the alerts emitted to the sinks (after de-duplication and grouping)."""
        for alert in batch:
            self._alerts_by[(alert.type, alert.severity)].inc()
        return batch

    def observe_records(self, batch: list[Any]) -> list[Any]:
        """Count the prompts (by action and trigger) and the alerts the lifecycle suppressed
        (by type and reason) among the engine's records: one pass, a tally per batch."""
        prompts: Tally[tuple[str, str]] = Tally()
        suppressed: Tally[tuple[str, str]] = Tally()
        for record in batch:
            kind = type(record)
            if kind is Prompt:
                prompts[(record.action, record.trigger)] += 1
            elif kind is LifecycleChange and record.action in SUPPRESSION_REASONS:
                suppressed[(record.alert_type, record.action)] += 1
        for (action, trigger), n in prompts.items():
            self._prompt_counter(action, trigger).inc(n)
        for key, n in suppressed.items():
            child = self._suppressed_by.get(key)
            if child is not None:
                child.inc(n)
        return batch

    def watch_recovery_store(self, db_dir: Path, pattern: str) -> None:
        """Export the size of the recovery partitions in ``db_dir`` (once per process)."""
        if self._recovery_store is None:
            self._recovery_store = RecoveryStore(db_dir, pattern, self.registry)

    def snapshot_taken(self, seconds: float, size_bytes: int) -> None:
        """The engine's state was serialised for a recovery snapshot."""
        self._snapshot_timer.observe(seconds)
        self.snapshot_size.set(size_bytes)

    def observe_models(self, batch: list[ModelReport | ModelChange]) -> list[ModelReport | ModelChange]:
        """Each fraud model's prequential figures and the champion, from the engine's reports."""
        for record in batch:
            if isinstance(record, ModelChange):
                self.champion_changes.labels(record.action).inc()
                continue
            for figures in record.models:
                model = figures.model
                self.model_auc.labels(model).set(math.nan if figures.auc is None else figures.auc)
                self.model_ap.labels(model).set(math.nan if figures.ap is None else figures.ap)
                self.model_labels.labels(model, "false").set(figures.labels)
                self.model_labels.labels(model, "true").set(figures.frauds)
                self.champion.labels(model).set(1.0 if model == record.champion else 0.0)
        return batch

    # -- hooks for sources and sinks -------------------------------------------------------

    def source_polled(self) -> None:
        """A worker polled its sources (the dataflow is moving)."""
        self.last_poll.set(time.time())

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(lag)

    def sink(self, name: str) -> SinkMetrics:
        """The metrics of the sink called ``name`` (its label), created at zero."""
        c = self._sink_counters
        return SinkMetrics(c["records"].labels(name), c["errors"].labels(name), c["retries"].labels(name),
                           self.sink_buffered.labels(name), c["lost"].labels(name), self.sink_capacity.labels(name),
                           self.sink_latency.labels(name))
