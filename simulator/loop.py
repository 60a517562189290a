"""The built-in simulator mode's closed loop: the engine's prompts back to the simulation.

In ``python run.py`` the simulator runs inside the engine's own process, as its source. A
``Loopback`` connects the two ends there: the source attaches the ``Simulation`` it builds
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
"""

from __future__ import annotations

import logging
import threading

from schemas.outputs import Prompt
from simulator.generator import Simulation
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
