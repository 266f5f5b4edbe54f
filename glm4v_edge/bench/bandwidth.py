"""The machine's memory bandwidth, and the decode-speed floor it implies.

Decoding one token at batch 1 reads every decoder weight once, so weight bytes / bandwidth is
a lower bound on ms/token no kernel can beat. Bandwidth is measured as a large array copy
(numpy on CPU, torch on CUDA), counting bytes read + bytes written, best of several runs. On
CPU the copy runs on as many threads as the variants use (one thread reaches only part of a
socket's bandwidth, so a one-thread floor is one that multi-threaded variants can "beat").
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

COPY_BYTES = 512 * 2**20  # well past any CPU cache


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_slices(length: int, threads: int) -> list[slice]:
    """``length`` items in ``threads`` contiguous parts, one per thread."""
    bounds = np.linspace(0, length, threads + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def copy_bandwidth_gbs(device: str = "cpu", runs: int = 5, threads: int | None = None) -> float:
    if device.startswith("cuda"):
        return _cuda_copy_bandwidth(device, runs)
    threads = threads or default_threads()
    source = np.ones(COPY_BYTES // 8)
    target = np.empty_like(source)
    slices = thread_slices(len(source), threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL while it copies
        for _ in range(runs + 1):
            start = time.perf_counter()
            list(pool.map(lambda part: np.copyto(target[part], source[part]), slices))
            best = min(best, time.perf_counter() - start)
    return round(2 * COPY_BYTES / best / 1e9, 2)


def _cuda_copy_bandwidth(device: str, runs: int) -> float:
    import torch

    source = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(runs + 1):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return round(2 * COPY_BYTES / best / 1e9, 2)


def floor_ms_per_token(decoder_bytes: int, bandwidth_gbs: float) -> float:
    """Reading the decoder weights once; copy bandwidth counts read + write, so reads get all of it."""
    return round(decoder_bytes / (bandwidth_gbs * 1e9) * 1000, 3)
