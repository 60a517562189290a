"""The built-in simulator mode's stream and closed loop: the engine's prompts back to the
simulation.

In ``python run.py`` the simulator runs inside the engine's own process, as its source:
``restartable_stream`` is the simulation's stream from any position, which ``run.py`` hands
to the dataflow's generated-stream source (``flows.sources.generated``). A ``Loopback``
connects the two ends there: each simulation the stream builds is attached to it
(``attach``), and a sink of the engine's prompt output (``sinks.loopback.LoopbackSink``) hands
every prompt to ``answer``, which passes it to the simulation; the customer's answers then
enter the stream as ``nba_*`` feedback events, and the engine's bandit learns from them.

One ``Loopback`` serves one process: with several Bytewax processes, only the prompts that
reach a sink in the process whose worker owns the simulator partition can be answered; the
others are counted in ``unanswered`` (and logged once). Live answers depend on how far the
simulation has run ahead when a prompt comes back, so unlike a replay they are not
deterministic; ``bench.nba_loop`` runs the same loop deterministically.

>>> from simulator.generator import Simulation, SimulatorConfig
>>> from simulator.responder import Responder
>>> loop = Loopback(Responder(7, {}))
>>> loop.simulation is None
True
>>> loop.attach(Simulation(SimulatorConfig(customers=2, days=1), responder=loop.responder))
>>> loop.simulation is not None
True
>>> from simulator.generator import generate
>>> events_from = restartable_stream(SimulatorConfig(customers=3, days=2))
>>> list(events_from(10)) == list(generate(SimulatorConfig(customers=3, days=2)))[10:]
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from schemas.outputs import Prompt
from simulator.generator import Event, Simulation, SimulatorConfig, generate
from simulator.responder import Responder

log = logging.getLogger(__name__)


class Loopback:
    """Where this process's prompts go to be answered by the simulation running here."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.simulation: Simulation | None = None
        self.received = 0  # prompts handed to a simulation
        self.unanswered = 0  # prompts no simulation of this process could take
        self._lock = threading.Lock()  # sinks of several workers may call at once

    def attach(self, simulation: Simulation) -> None:
        """The simulation whose customers answer from now on (the source builds it; a
        rebuilt partition replaces it)."""
        with self._lock:
            self.simulation = simulation

    def answer(self, prompt: Prompt) -> bool:
        """Pass ``prompt`` to the simulation; False if none runs in this process."""
        with self._lock:
            simulation = self.simulation
            if simulation is None:
                self.unanswered += 1
                if self.unanswered == 1:
                    log.warning("a next-best-action prompt cannot be answered: the simulator runs in "
                                "another process (only its own process answers prompts)")
                return False
            self.received += 1
        simulation.answer(prompt)
        return True


def restartable_stream(config: SimulatorConfig, loopback: Loopback | None = None) -> Callable[[int], Iterator[Event]]:
    """The simulation's stream from its ``start``-th event on: ``events_from(start)``.

    Deterministic: each call runs a new simulation and skips the ``start`` events generated
    before (a source rebuilt from a snapshot reaches the same place). With a ``loopback``,
    each simulation answers the prompts handed to it: a closed loop. A rebuilt one regenerates
    the stream up to its position without the answers given before the restart (they are gone
    with the old process), then goes on answering.
    """
    def events_from(start: int) -> Iterator[Event]:
        events: Iterator[Event]
        if loopback is None:
            events = generate(config)
        else:
            simulation = Simulation(config, with_truth=False, responder=loopback.responder)
            loopback.attach(simulation)
            events = (event for event, _ in simulation.run())
        for _ in range(start):
            next(events, None)
        return events
    return events_from
