"""Console sink: one readable line per alert (or other record) on standard output.

Delivery: at most once (a terminal keeps no position); meant for people, not programs.
"""

from __future__ import annotations

import sys
from typing import TextIO

from schemas.outputs import Alert, Prompt
from sinks.base import Record, Sink


def describe(record: Record) -> str:
    """A one-line human summary of an output record."""
    if isinstance(record, Alert):
        why = "; ".join(r.text for r in record.reasons[:3])
        rm = f" rm={record.rm_id}" if record.rm_id else ""
        revision = f" ({record.status}, revision {record.revision})" if record.revision > 1 else ""
        return (f"ALERT {record.severity:<8} {record.type:<22} {record.event_ts} "
                f"customer={record.customer_id}{rm} score={record.score:.2f}{revision} | {why}")
    if isinstance(record, Prompt):
        product = f" product={record.product_id}" if record.product_id else ""
        why = record.reasons[0].text if record.reasons else record.trigger
        return (f"PROMPT {record.action:<24} {record.event_ts} customer={record.customer_id} "
                f"rm={record.rm_id or '-'}{product} score={record.score:.2f} | {why}")
    return record.to_bytes().decode("utf-8")


class ConsoleSink(Sink):
    """Print records as they come."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def open(self, resume: object = None) -> None:
        if self._stream is None:
            self._stream = sys.stdout

    def write_batch(self, records: list[Record]) -> None:
        assert self._stream is not None
        self._stream.write("".join(describe(r) + "\n" for r in records))
        self._stream.flush()
