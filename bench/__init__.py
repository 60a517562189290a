"""Benchmarks and evaluation tools of the engine (not imported by the engine itself)."""

import os

# As run.py does, before numpy loads: the engine's matrix products are small, and BLAS threads
# would only spin on the core the measured process needs for its other threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
