"""JSON Lines file sink.

Delivery: exactly once into the file when run with recovery. ``position()`` is the byte
length written so far; after a restart the file is truncated back to the last snapshot
before writing resumes, so records replayed after the snapshot are written once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from sinks.base import Record, Sink


class JsonlSink(Sink):
    """One record per line, flushed at the end of every batch."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._file: BinaryIO | None = None

    def open(self, resume: object = None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(resume, int):
            self._file = open(self._path, "r+b" if self._path.exists() else "wb")  # noqa: SIM115
            self._file.truncate(resume)
            self._file.seek(resume)
        else:
            self._file = open(self._path, "wb")  # noqa: SIM115 (held open until close)

    def write_batch(self, records: list[Record]) -> None:
        assert self._file is not None, "JsonlSink.write_batch before open"
        self._file.write(b"".join(r.to_bytes() + b"\n" for r in records))
        self._file.flush()

    def position(self) -> int:
        assert self._file is not None
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            close_durably(self._file)
            self._file = None


def close_durably(handle: BinaryIO) -> None:
    """Flush ``handle`` to the disk, not only to the operating system, and close it."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
