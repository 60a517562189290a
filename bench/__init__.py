"""Benchmarks and evaluation tools of the engine (not imported by the engine itself)."""
