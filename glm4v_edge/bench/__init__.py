"""Benchmark every variant in one run: latency, memory, size, fidelity, task accuracy."""
