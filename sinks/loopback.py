"""Loopback sink: next-best-action prompts back to the built-in simulator's customers.

Delivery: at most once, in memory, to the simulation of this process (``simulator.loop``);
it exists for the built-in simulator mode, where simulated customers answer the engine's
prompts. Records other than prompts are ignored.
"""

from __future__ import annotations

from typing import Protocol

from schemas.outputs import Prompt
from sinks.base import Record, Sink


class PromptAnswerer(Protocol):
    """Takes a prompt to be answered (``simulator.loop.Loopback``)."""

    def answer(self, prompt: Prompt) -> bool: ...


class LoopbackSink(Sink):
    """Hand every prompt to ``target``; nothing to open or flush."""

    def __init__(self, target: PromptAnswerer) -> None:
        self._target = target

    def write_batch(self, records: list[Record]) -> None:
        for record in records:
            if isinstance(record, Prompt):
                self._target.answer(record)
