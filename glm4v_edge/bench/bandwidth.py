"""The machine's memory bandwidth, and the decode-speed floor it implies.

Decoding one token at batch 1 reads every decoder weight once, so weight bytes / bandwidth is
a lower bound on ms/token no kernel can beat. Bandwidth is measured as a large array copy
(numpy on CPU, torch on CUDA), counting bytes read + bytes written, best of several runs.
"""

from __future__ import annotations

import time

import numpy as np

COPY_BYTES = 512 * 2**20  # well past any CPU cache


def copy_bandwidth_gbs(device: str = "cpu", runs: int = 5) -> float:
    if device.startswith("cuda"):
        import torch

        source = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=device).fill_(1.0)
        target = torch.empty_like(source)
        best = float("inf")
        for _ in range(runs + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            target.copy_(source)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    else:
        source = np.ones(COPY_BYTES // 8)
        target = np.empty_like(source)
        best = float("inf")
        for _ in range(runs + 1):
            start = time.perf_counter()
            np.copyto(target, source)
            best = min(best, time.perf_counter() - start)
    return round(2 * COPY_BYTES / best / 1e9, 2)


def floor_ms_per_token(decoder_bytes: int, bandwidth_gbs: float) -> float:
    """Reading the decoder weights once; copy bandwidth counts read + write, so reads get all of it."""
    return round(decoder_bytes / (bandwidth_gbs * 1e9) * 1000, 3)
