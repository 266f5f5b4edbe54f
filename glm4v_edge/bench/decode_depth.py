"""Decode ms/token after long contexts (``glm4v-edge bench decode-depth``): the ONNX decoder with
its cache joined per step and written in place, and llama.cpp on a GGUF of the same decoder.

A thinking model's reply runs to thousands of tokens, so decode speed deep into the context
matters as much as at its start. The ONNX rows time the exported decoder alone after ``depth``
cached positions (random embeddings and cache: the work does not depend on the values), ``steps``
steps after warm-up, median over steps, then over ``rounds``: "cache per step" feeds the cache as
an input and gets a new one back each step (what exports without an in-place ``kv_cache`` do);
"cache in place" binds one preallocated cache as both past and present, as generate() does.
llama-bench decodes ``steps`` tokens after a context of each depth (``tg@d``, its mean). Depths
and rounds are interleaved, every row of a depth measured back to back, so a shared machine's
drift hits every row alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.progress import SILENT, Progress

KIND = "decode-depth"
WARM_UP_STEPS = 3


@dataclass(frozen=True)
class DecodeDepthSettings:
    artifacts: Path
    dtype: str = "q4"
    depths: tuple[int, ...] = (512, 2048, 8192)
    steps: int = 32  # timed decode steps per measurement, after warm-up
    rounds: int = 2  # interleaved repetitions; medians reported
    threads: int | None = None  # None: every core this process may use
    peer: Path | None = None  # a GGUF of the same decoder, for llama-bench
    out: Path | None = None
    name: str | None = None


def onnx_step_ms(variant, depth: int, steps: int, in_place: bool) -> float:
    """Median ms of one decode step of an ONNX variant's decoder after ``depth`` cached positions."""
    rng = np.random.default_rng(depth)
    dtype = variant.decoder.float_type(variant.past_names[0])
    # Per step a preallocated cache still needs room for the one position the step writes.
    room = depth + (steps + WARM_UP_STEPS if in_place else int(variant.cache_needs_room))
    arrays = [rng.standard_normal((1, variant.kv_heads, room, variant.head_dim)).astype(dtype)
              for _ in variant.past_names]
    cache = [variant.decoder.value(array) for array in arrays]  # on CPU these point at the arrays
    embeds = rng.standard_normal((1, 1, variant.config.text_config.hidden_size)).astype(np.float32)
    times = []
    for step in range(steps + WARM_UP_STEPS):
        grown = step if in_place else 0  # in place the context really grows; per step it is re-fed
        mask = np.ones((1, depth + grown + 1), np.int64)
        positions = np.full((3, 1, 1), depth + grown, np.int64)
        start = time.perf_counter()
        variant.decode(embeds, mask, positions, cache, keep=1, in_place=in_place)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times[WARM_UP_STEPS:])) * 1000, 2)


def llama_cpp_step(gguf: Path, threads: int, steps: int, peer: dict) -> Callable[[int], float]:
    """A measure of llama-bench's ms/token after a context of ``depth``; ``peer`` collects its
    commit and peak memory."""
    from glm4v_edge.bench.peer import check_peer, run_llama_bench

    binary = check_peer(gguf)

    def measure(depth: int) -> float:
        records, peak = run_llama_bench(binary, ["-m", str(gguf), "-t", str(threads), "-r", "1",
                                                 "-p", "0", "-n", str(steps), "-d", str(depth)])
        peer.update(commit=records[0]["build_commit"], peak_rss_mib=max(peak, peer.get("peak_rss_mib", 0)))
        return round(1000 / records[0]["avg_ts"], 2)
    return measure


def depth_row(samples: dict[str, list[float]]) -> dict:
    """One depth's medians over rounds, the speed-ups, and every round's figures."""
    row = {name: round(float(np.median(values)), 2) for name, values in samples.items()}
    row["in_place_speedup"] = round(row["cache_per_step_ms"] / row["cache_in_place_ms"], 2)
    if "llama_cpp_ms" in row:
        row["in_place_vs_llama_cpp"] = round(row["llama_cpp_ms"] / row["cache_in_place_ms"], 2)
    return {**row, "rounds": samples}


def measure_decode_depth(settings: DecodeDepthSettings, progress: Progress = SILENT) -> dict:
    from glm4v_edge.bench.bandwidth import default_threads
    from glm4v_edge.bench.onnx_build import check_onnx_build
    from glm4v_edge.hub import pinned
    from glm4v_edge.runtime.registry import load_from

    settings = replace(settings, threads=settings.threads or default_threads())
    name = check_onnx_build(settings.artifacts, settings.dtype)
    peer = {"gguf": settings.peer.name} if settings.peer else {}
    # The GGUF and llama-bench are checked before the variant loads.
    llama_cpp = llama_cpp_step(settings.peer, settings.threads, settings.steps, peer) if settings.peer else None
    progress.start(KIND, 1 + settings.rounds * len(settings.depths))
    progress.step(f"loading {name}")
    variant = load_from(name, None, settings.artifacts, device="cpu", threads=settings.threads, cpu_profile=False)
    measures = {"cache_per_step_ms": lambda depth: onnx_step_ms(variant, depth, settings.steps, in_place=False),
                "cache_in_place_ms": lambda depth: onnx_step_ms(variant, depth, settings.steps, in_place=True)}
    if llama_cpp:
        measures["llama_cpp_ms"] = llama_cpp
    samples = {depth: {measure: [] for measure in measures} for depth in settings.depths}
    for number in range(settings.rounds):
        for depth in settings.depths:
            progress.step(f"round {number + 1}: after {depth} cached positions")
            for measure, run in measures.items():
                samples[depth][measure].append(run(depth))
    record = new_record(KIND, record_name(settings.name, KIND, settings.artifacts),
                        "decode ms/token after long contexts: the ONNX decoder's cache per step vs in place, "
                        "and llama.cpp, in one run", {**plain(settings), "artifacts": pinned(settings.artifacts)})
    return {**record, "peer": peer or None, "depths": {str(depth): depth_row(row) for depth, row in samples.items()}}


def markdown(record: dict) -> str:
    settings = record["settings"]
    rows = [[depth, row["cache_per_step_ms"], row["cache_in_place_ms"], f"{row['in_place_speedup']:.2f}x",
             row.get("llama_cpp_ms"), row.get("in_place_vs_llama_cpp")] for depth, row in record["depths"].items()]
    lines = heading(record) + table(["cached positions", "cache per step ms", "cache in place ms", "in place speed-up",
                                     "llama.cpp ms", "llama.cpp / in place"], rows)
    lines += ["", f"onnx-{settings['dtype']}, {settings['threads']} threads; medians of {settings['steps']} steps, "
              f"then of {settings['rounds']} interleaved rounds."]
    return "\n".join(lines) + "\n"
