"""A deterministic, lazy simulator of a bank/brokerage customer event stream.

It emits the input events of CONTRACT.md (``profile``, ``transaction``, ``app``, ``feedback``)
for a synthetic population with daily and weekly rhythms, injects labelled fraud and AML cases
(see ``simulator.typologies``) and churners (``simulator.churn``), and delivers delayed
``fraud``/``legit``/``churned`` feedback labels in time order with everything else.

Public API:

- ``SimulatorConfig``: what to simulate (frozen, validated).
- ``generate(config)``: the events, lazily, in non-decreasing ``ts`` order.
- ``generate_with_truth(config)``: ``(event, truth)`` pairs; truth for every transaction.
- ``Simulation(config, with_truth, responder)``: one run; with a ``Responder``
  (``simulator.responder``) its customers answer the next-best-action prompts handed to
  ``Simulation.answer`` from their latent preferences (``simulator.preferences``): the
  closed loop of ``python run.py`` (``simulator.loop``) and of ``bench.nba_loop``.
- ``write_jsonl(config, out_path, truth_path=None)``: record a stream (``.gz`` for gzip).
- ``paced(events, rate_per_s)``: replay at a bounded rate for live demos.
- ``TYPOLOGIES``: the names of the injected typologies.
"""

from simulator.generator import (
    Event,
    Simulation,
    SimulatorConfig,
    Truth,
    generate,
    generate_with_truth,
    write_jsonl,
)
from simulator.live import paced
from simulator.typologies import TYPOLOGIES

__all__ = [
    "TYPOLOGIES",
    "Event",
    "Simulation",
    "SimulatorConfig",
    "Truth",
    "generate",
    "generate_with_truth",
    "paced",
    "write_jsonl",
]
