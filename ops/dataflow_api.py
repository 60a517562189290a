"""Bytewax's own metrics, merged into the engine's ``/metrics``.

Bytewax 0.21 measures its runtime in Rust (OpenTelemetry instruments, exported in the
Prometheus format), per step and worker: ``bytewax_snapshot_duration_seconds`` (each
stateful step's and stateful source's ``snapshot``), ``bytewax_partd_write_duration_seconds``
(writing snapshots and progress to the recovery partitions), ``bytewax_partd_load_builder_duration_seconds``
(loading them at start), ``bytewax_stateful_batch_on_batch_duration_seconds``,
``bytewax_flat_map_batch_duration_seconds``, ``bytewax_inp_part_next_batch_duration_seconds``
and ``bytewax_inp_part_next_batch_size``, ``bytewax_out_part_write_batch_duration_seconds``,
``bytewax_item_inp_count_total`` and ``bytewax_item_out_count_total``. It offers them only
through its "dataflow API", a web server it starts when ``BYTEWAX_DATAFLOW_API_ENABLED`` is
set, on ``BYTEWAX_DATAFLOW_API_PORT`` (3030 by default) and every interface, with no option
for the address and no authentication; ``/metrics`` there also appends the Python client's
global registry (``bytewax._metrics``), which the engine does not use. At start it writes the
dataflow's graph to ``dataflow.json`` in ``BYTEWAX_DATAFLOW_API_CACHE_PATH`` (by default the
working directory), and the dataflow does not start if it cannot: ``api_environment`` points
it at a directory of its own.

``BytewaxMetrics`` reads that ``/metrics`` over loopback at each scrape of the engine and
re-exports the ``bytewax_*`` families: without the ``otel_scope_name`` label, and with the
series Bytewax exports more than once under the same labels (its recovery writers, which
differ only by a label it leaves out) added up, since a scrape may not hold duplicates.
``crm_engine_bytewax_api_up`` says whether the read succeeded (0 before the dataflow starts,
after it ends, or if the port was taken).

>>> from prometheus_client import CollectorRegistry
>>> text = '''# HELP bytewax_x_seconds x
... # TYPE bytewax_x_seconds histogram
... bytewax_x_seconds_bucket{part_id="0",otel_scope_name="dataflow",le="+Inf"} 2
... bytewax_x_seconds_sum{part_id="0",otel_scope_name="dataflow"} 0.5
... bytewax_x_seconds_count{part_id="0",otel_scope_name="dataflow"} 2
... bytewax_x_seconds_bucket{part_id="0",otel_scope_name="dataflow",le="+Inf"} 3
... bytewax_x_seconds_sum{part_id="0",otel_scope_name="dataflow"} 0.25
... bytewax_x_seconds_count{part_id="0",otel_scope_name="dataflow"} 3
... # TYPE target_info gauge
... target_info{service_name="unknown_service"} 1
... '''
>>> [(s.name, s.labels, s.value) for f in bytewax_families(text) for s in f.samples]
... # doctest: +NORMALIZE_WHITESPACE
[('bytewax_x_seconds_bucket', {'part_id': '0', 'le': '+Inf'}, 5.0),
 ('bytewax_x_seconds_sum', {'part_id': '0'}, 0.75),
 ('bytewax_x_seconds_count', {'part_id': '0'}, 5.0)]
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

PREFIX: Final = "bytewax_"
DROPPED_LABELS: Final = frozenset({"otel_scope_name"})
#: Bytewax's variables (read by its runtime when the dataflow starts).
ENABLED_VARIABLE: Final = "BYTEWAX_DATAFLOW_API_ENABLED"
PORT_VARIABLE: Final = "BYTEWAX_DATAFLOW_API_PORT"
CACHE_VARIABLE: Final = "BYTEWAX_DATAFLOW_API_CACHE_PATH"


def api_environment(port: int, cache_dir: Path) -> dict[str, str]:
    """The environment variables that make Bytewax serve its dataflow API on ``port``,
    writing its ``dataflow.json`` to ``cache_dir`` (which must exist and be writable; a
    read-only working directory, as in the Kubernetes pods, would stop the dataflow)."""
    return {ENABLED_VARIABLE: "true", PORT_VARIABLE: str(port), CACHE_VARIABLE: str(cache_dir)}


def bytewax_families(text: str) -> Iterator[Metric]:
    """The ``bytewax_*`` families of a Prometheus exposition, without ``DROPPED_LABELS``,
    with samples of the same name and labels added up."""
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for sample in family.samples:
            labels = tuple((k, v) for k, v in sample.labels.items() if k not in DROPPED_LABELS)
            key = (sample.name, labels)
            merged[key] = merged.get(key, 0.0) + sample.value
        metric = Metric(family.name, family.documentation, family.type)
        for (name, labels), value in merged.items():
            metric.add_sample(name, dict(labels), value)
        yield metric


class BytewaxMetrics:
    """A collector of Bytewax's own metrics, read from its dataflow API on loopback ``port``
    at each collection (see the module doc); ``timeout_s`` bounds a scrape's wait for it."""

    def __init__(self, port: int, registry: CollectorRegistry, timeout_s: float = 2.0) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._timeout_s = timeout_s
        self._failing = False
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [self._up(0.0)]

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout_s) as reply:
                text = reply.read().decode()
            families = list(bytewax_families(text))
        except (OSError, ValueError) as exc:  # not started yet, ended, or the port was taken
            if not self._failing:
                log.info("Bytewax's dataflow API not readable at %s: %s", self._url, exc)
            self._failing = True
            yield self._up(0.0)
            return
        self._failing = False
        yield self._up(1.0)
        yield from families

    @staticmethod
    def _up(value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily("crm_engine_bytewax_api_up", "1 if Bytewax's dataflow API answered this "
                                 "scrape (its bytewax_* metrics are included), else 0.", value=value)
