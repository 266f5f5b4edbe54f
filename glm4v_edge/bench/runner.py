"""One benchmark run: every variant through the same protocol, prompts and machine, each in its
own fresh process (clean peak memory; threads and caches of one cannot slow the next; a crash
loses only that variant). The baseline runs first and hands its greedy replies and logits to
the others for the fidelity metrics.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glm4v_edge.bench.latency import PROMPT_SETS, measure_latency
from glm4v_edge.bench.settings import VariantChoice
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.machine import peak_rss_mib
from glm4v_edge.progress import SILENT, Progress


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
    task_questions: int = 0  # the shapes task's held-out questions (0: skip)
    fidelity_prompts: int = 0  # held-out shapes prompts beside the four parity prompts
    public_set: str | None = None
    public_limit: int | None = None
    max_new_tokens: int = 64
    references: dict[str, Any] | None = None  # from the baseline; None: this job is the baseline
    label: str | None = None  # the report row's name (None: the variant's own)
    reads_in_turns: bool = False  # measure the read-only loops in turns with the decode runs (CPU)
    extra: dict[str, Any] = field(default_factory=dict)


def _load(job: Job):
    from glm4v_edge.runtime.registry import load_from

    # The benchmark measures the image sizes it names: no CPU profile shrinking them.
    return load_from(job.variant, job.model, job.artifacts, device=job.device, threads=job.threads, cpu_profile=False)


def measure(job: Job) -> dict:
    """Runs in the child process."""
    import torch

    from glm4v_edge.bench import accuracy

    if job.threads:
        torch.set_num_threads(job.threads)
    reads = None
    if job.reads_in_turns:  # before the load: its array is resident under everything the variant does
        from glm4v_edge.bench.bandwidth import default_threads
        from glm4v_edge.bench.machine_peak import ReadProbe

        reads = ReadProbe(job.threads or default_threads())
    started = time.perf_counter()
    variant = _load(job)
    result: dict[str, Any] = {"status": "ok", "name": job.label or variant.name,
                              "load_s": round(time.perf_counter() - started, 3),
                              "artifact_bytes": variant.artifact_bytes, "decoder_bytes": variant.decoder_bytes,
                              "details": variant.details}
    result["latency"] = measure_latency(variant, PROMPT_SETS[job.prompt_set], job.runs, reads)
    prompts = accuracy.fidelity_prompts(job.fidelity_prompts)
    baseline = job.references is None
    if baseline:
        references = result["references"] = {"fidelity": accuracy.reference_outputs(variant, prompts)}
    else:
        references = job.references
        result["fidelity"] = accuracy.fidelity(variant, prompts, references["fidelity"])
    if job.task_questions:
        result["task"], replies = accuracy.task_accuracy(variant, job.task_questions, job.max_new_tokens,
                                                         references.get("task_replies"))
        if baseline:
            references["task_replies"] = replies
    if job.public_set:
        from glm4v_edge.bench.public_set import score

        result["public_set"] = score(variant, Path(job.public_set), limit=job.public_limit,
                                     max_new_tokens=job.max_new_tokens)
    # the variant's own: the read loops' array, resident from before the load, is not its memory
    peak = peak_rss_mib()
    result["peak_rss_mib"] = None if peak is None else round(peak - (reads.resident_mib if reads else 0), 1)
    result["cuda_peak_mib"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                               if torch.cuda.is_available() else None)
    return result


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
        error = f"{type(failure).__name__}: {first_line(failure)}"
    return {"status": "failed", "name": job.label or job.variant, "error": error,
            "seconds": round(time.perf_counter() - started, 1)}


def run_benchmark(baseline: Job, variants: list[VariantChoice],
                  progress: Progress = SILENT) -> dict[str, dict]:
    """The baseline first, then each variant (from its own folder when it names one) with the
    baseline's references; results keyed by row label."""
    progress.step(f"measuring {baseline.variant} (baseline)")
    results = {baseline.variant: run_isolated(baseline)}
    references = results[baseline.variant].pop("references", None)
    if references is None:
        raise Glm4vEdgeError(f"the baseline {baseline.variant} failed: {results[baseline.variant].get('error')}")
    for choice in variants:
        if choice.label == baseline.variant:
            continue
        progress.step(f"measuring {choice.label}")
        artifacts = str(choice.artifacts) if choice.artifacts is not None else baseline.artifacts
        results[choice.label] = run_isolated(replace(baseline, variant=choice.name, artifacts=artifacts,
                                                     label=choice.label, references=references))
    return results
