"""The decoder under onnxruntime's session options (``glm4v-edge bench session-options``).

One ONNX build's decoder is opened once per case (a set of options beside onnxruntime's
defaults: spinning threads, the memory arena, graph optimisation level, denormals, the thread
pool's block size, the thread count) and timed as ``generate`` runs it: a prefill of ``prefill``
tokens (best of two) and decode steps after ``past`` cached positions with the cache written in
place (``decode_depth.onnx_step_ms``). Cases and rounds are interleaved, the order reversed every
other round, and every case is also given as a ratio to the defaults of its own round, so a
shared machine's drift hits every case alike.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.progress import SILENT, Progress

KIND = "session-options"


@dataclass(frozen=True)
class SessionCase:
    """One way to open the decoder's session; unset fields keep onnxruntime's defaults."""

    threads: int | None = None  # None: the run's --threads
    spinning: bool = True  # intra-op threads spin between kernels instead of sleeping
    arena: bool = True  # onnxruntime's CPU memory arena
    optimization: str = "all"  # graph optimisation level: all, extended or basic
    config: tuple[tuple[str, str], ...] = ()  # session config entries

    def apply(self, options) -> None:
        """Set this case's options on an onnxruntime ``SessionOptions`` (the thread count aside)."""
        import onnxruntime as ort

        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
        options.enable_cpu_mem_arena = self.arena
        options.graph_optimization_level = levels[self.optimization]
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in self.config:
            options.add_session_config_entry(key, value)


DEFAULTS = "defaults"
CASES = {
    DEFAULTS: SessionCase(),
    "no spinning": SessionCase(spinning=False),
    "no memory arena": SessionCase(arena=False),
    "basic graph optimizations": SessionCase(optimization="basic"),
    "denormals as zero": SessionCase(config=(("session.set_denormal_as_zero", "1"),)),
    "dynamic block base 4": SessionCase(config=(("session.dynamic_block_base", "4"),)),
    "1 thread": SessionCase(threads=1),
}


@dataclass(frozen=True)
class SessionOptionsSettings:
    artifacts: Path
    dtype: str = "q4"
    cases: tuple[str, ...] = tuple(CASES)
    past: int = 807  # cached positions before the timed steps (the 784 px question's prompt)
    steps: int = 16  # timed decode steps per case and round, after warm-up
    prefill: int = 128  # prompt tokens of the timed prefill (0: none)
    rounds: int = 2
    threads: int | None = None  # None: every core this process may use
    out: Path | None = None
    name: str | None = None


def check_cases(names: tuple[str, ...]) -> None:
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise Glm4vEdgeError(f"unknown session-options case {unknown[0]!r}; known: {', '.join(CASES)}")


def prefill_ms(variant, tokens: int) -> float:
    """Best of two prefills of ``tokens`` random embeddings, the cache written in place."""
    rng = np.random.default_rng(tokens)
    embeds = rng.standard_normal((1, tokens, variant.config.text_config.hidden_size)).astype(np.float32)
    mask = np.ones((1, tokens), np.int64)
    positions = np.broadcast_to(np.arange(tokens, dtype=np.int64), (3, 1, tokens))
    best = float("inf")
    for _ in range(2):
        cache, _host = variant.new_cache(1, tokens + 1 if variant.shared_cache else 0)
        start = time.perf_counter()
        variant.decode(embeds, mask, positions, cache, keep=1, in_place=variant.shared_cache)
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def measure_case(variant, case: SessionCase, settings: SessionOptionsSettings) -> dict:
    from glm4v_edge.bench.decode_depth import onnx_step_ms
    from glm4v_edge.bench.onnx_build import cpu_session

    variant.decoder.session = None  # one copy of the weights at a time
    gc.collect()
    start = time.perf_counter()
    variant.decoder.session = cpu_session(variant.decoder.path, case.threads or settings.threads,
                                          configure=case.apply)
    load_s = time.perf_counter() - start
    return {"load_s": round(load_s, 2),
            "prefill_ms": prefill_ms(variant, settings.prefill) if settings.prefill else None,
            "decode_ms": onnx_step_ms(variant, settings.past, settings.steps, in_place=variant.shared_cache)}


def summary(rounds: list[dict[str, dict]], name: str) -> dict:
    """A case's medians over rounds, and its ratio to the same round's defaults."""
    result = {}
    for key in ("load_s", "prefill_ms", "decode_ms"):
        values = [row[name][key] for row in rounds]
        if values[0] is None:
            continue
        result[key] = round(float(np.median(values)), 2)
        if key != "load_s":
            result[key.replace("_ms", "_vs_defaults")] = round(float(np.median(
                [row[name][key] / row[DEFAULTS][key] for row in rounds])), 3)
    return {**result, "rounds": [row[name] for row in rounds]}


def measure_session_options(settings: SessionOptionsSettings, progress: Progress = SILENT) -> dict:
    import onnxruntime as ort

    from glm4v_edge.bench.bandwidth import default_threads
    from glm4v_edge.bench.onnx_build import check_onnx_build
    from glm4v_edge.hub import pinned
    from glm4v_edge.runtime.registry import load_from

    check_cases(settings.cases)
    cases = (DEFAULTS, *(name for name in settings.cases if name != DEFAULTS))  # the ratios need it
    settings = replace(settings, threads=settings.threads or default_threads(), cases=cases)
    name = check_onnx_build(settings.artifacts, settings.dtype)
    progress.start(KIND, 1 + settings.rounds * len(cases))
    progress.step(f"loading {name}")
    variant = load_from(name, None, settings.artifacts, device="cpu", threads=settings.threads, cpu_profile=False)
    rounds = []
    for number in range(settings.rounds):
        order = cases if number % 2 == 0 else cases[::-1]
        row = {}
        for case in order:
            progress.step(f"round {number + 1}: {case}")
            row[case] = measure_case(variant, CASES[case], settings)
        rounds.append(row)
    record = new_record(KIND, record_name(settings.name, KIND, settings.artifacts),
                        "the decoder's prefill and decode under onnxruntime's session options, in one run",
                        {**plain(settings), "artifacts": pinned(settings.artifacts)})
    return {**record, "onnxruntime": ort.__version__, "shared_cache": variant.shared_cache,
            "cases": {case: {"options": asdict(CASES[case]), **summary(rounds, case)} for case in cases}}


def spread(result: dict, key: str, digits: int = 1) -> str:
    """'[lowest-highest]' of a case's rounds: how far the machine moved under the same case."""
    values = [row[key] for row in result["rounds"]]
    return f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"


def markdown(record: dict) -> str:
    settings = record["settings"]
    prefill = settings["prefill"]
    rows = []
    for case, result in record["cases"].items():
        row = [case, f"{result['decode_ms']:.1f} {spread(result, 'decode_ms')} ({result['decode_vs_defaults']:.3f}x)"]
        if prefill:
            row.append(f"{result['prefill_ms']:.0f} {spread(result, 'prefill_ms', 0)} "
                       f"({result['prefill_vs_defaults']:.3f}x)")
        rows.append([*row, f"{result['load_s']:.1f}"])
    header = ["case", f"decode ms/token after {settings['past']} [rounds] (x defaults)"]
    if prefill:
        header.append(f"prefill {prefill} tokens ms [rounds] (x defaults)")
    lines = heading(record) + table([*header, "load s"], rows)
    lines += ["", f"onnx-{settings['dtype']} decoder, {settings['threads']} threads unless the case says, "
              f"onnxruntime {record['onnxruntime']}; medians of {settings['rounds']} interleaved rounds "
              f"({settings['steps']} decode steps each, prefill best of two), each ratio against the same "
              "round's defaults."]
    return "\n".join(lines) + "\n"
