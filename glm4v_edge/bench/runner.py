"""One benchmark run: every variant through the same protocol, prompts and machine, each in its
own fresh process (clean peak memory; threads and caches of one cannot slow the next; a crash
loses only that variant). The baseline runs first and hands its greedy replies and logits to
the others for the fidelity metrics.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glm4v_edge.bench.latency import PROMPT_SETS, measure_latency
from glm4v_edge.errors import Glm4vEdgeError

Report = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """What one subprocess measures."""

    variant: str
    model: str | None
    artifacts: str | None
    device: str | None
    threads: int | None
    prompt_set: str = "standard"
    runs: int = 5
    task_questions: int = 0  # the embedded model's held-out questions (0: skip)
    public_set: str | None = None
    public_limit: int | None = None
    max_new_tokens: int = 64
    references: dict[str, Any] | None = None  # from the baseline; None: this job is the baseline
    extra: dict[str, Any] = field(default_factory=dict)


def _load(job: Job):
    from glm4v_edge.runtime.registry import load_from

    options = {"device": job.device, "threads": job.threads}
    return load_from(job.variant, job.model, job.artifacts, **{k: v for k, v in options.items() if v is not None})


def measure(job: Job) -> dict:
    """Runs in the child process."""
    import torch

    from glm4v_edge.bench import accuracy

    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.perf_counter()
    variant = _load(job)
    result: dict[str, Any] = {"status": "ok", "name": variant.name,
                              "load_s": round(time.perf_counter() - started, 3),
                              "artifact_bytes": variant.artifact_bytes, "decoder_bytes": variant.decoder_bytes}
    context = getattr(variant, "context_length", 4096)
    result["latency"] = measure_latency(variant, PROMPT_SETS[job.prompt_set], job.runs, context)
    prompts = accuracy.fidelity_prompts()
    if job.references is None:
        result["references"] = accuracy.reference_outputs(variant, prompts)
    else:
        result["fidelity"] = accuracy.fidelity(variant, prompts, job.references)
    if job.task_questions:
        result["task"] = accuracy.task_accuracy(variant, job.task_questions, job.max_new_tokens)
    if job.public_set:
        from glm4v_edge.bench.public_set import score

        result["public_set"] = score(variant, Path(job.public_set), limit=job.public_limit,
                                     max_new_tokens=job.max_new_tokens)
    result["peak_rss_mib"] = peak_rss_mib()
    result["cuda_peak_mib"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                               if torch.cuda.is_available() else None)
    return result


def peak_rss_mib() -> float | None:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec on
    Linux, so a spawned child would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss (bytes on macOS)

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)


def run_isolated(job: Job) -> dict:
    """``measure`` in a fresh spawned process; any failure becomes a ``failed`` result."""
    started = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure, job).result()
    except BrokenProcessPool:
        error = "the process died (crash or out of memory)"
    except Glm4vEdgeError as failure:
        error = str(failure)
    except Exception as failure:  # any exception inside the variant: reported, the run goes on
        error = f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
    return {"status": "failed", "name": job.variant, "error": error, "seconds": round(time.perf_counter() - started, 1)}


def run_benchmark(baseline: Job, variants: list[str], report: Report = lambda step: None) -> dict[str, dict]:
    """The baseline first, then each variant with the baseline's references."""
    report(f"measuring {baseline.variant} (baseline)")
    results = {baseline.variant: run_isolated(baseline)}
    references = results[baseline.variant].pop("references", None)
    if references is None:
        raise Glm4vEdgeError(f"the baseline {baseline.variant} failed: {results[baseline.variant].get('error')}")
    for name in variants:
        if name == baseline.variant:
            continue
        report(f"measuring {name}")
        results[name] = run_isolated(replace(baseline, variant=name, references=references))
    return results
