"""One ``glm4v-edge bench`` run: the settings checked and completed, every variant measured in
its own process, the report written."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from glm4v_edge.bench.settings import PROMPT_SET_NAMES, BenchSettings, VariantChoice, parse_variant_choices
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.progress import SILENT, Progress

EMBEDDED_TASK_QUESTIONS = 100  # the shapes task only means something to the embedded model


@dataclass(frozen=True)
class BenchPlan:
    """What will run, decided before anything is loaded."""

    baseline: str
    variants: list[VariantChoice]  # the others that can run here, in order
    not_run: dict[str, str]  # row label -> why it cannot run here (a "not run" row in the report)
    device: str
    task_questions: int


def plan_bench(settings: BenchSettings) -> BenchPlan:
    """Check every choice up front (a bad name fails in one line, before any process starts)."""
    from glm4v_edge.checkpoint import default_device
    from glm4v_edge.runtime.registry import built_variants, check_built, check_measurable, unavailable

    if settings.prompts not in PROMPT_SET_NAMES:
        raise Glm4vEdgeError(f"unknown prompt set {settings.prompts!r}; choose {', '.join(PROMPT_SET_NAMES)}")
    device = settings.device or default_device()
    baseline = settings.baseline or ("torch-bf16" if device.startswith("cuda") else "torch-fp32")
    if settings.peers:
        from glm4v_edge.bench.peer import check_peer

        for gguf in settings.peers:
            check_peer(gguf)
    if settings.variants == "all":
        chosen = [VariantChoice(name) for name in built_variants(settings.artifacts)]
    else:
        chosen = parse_variant_choices(settings.variants)
    check_measurable([baseline, *(choice.name for choice in chosen)])
    if len({choice.label for choice in chosen}) < len(chosen):
        raise Glm4vEdgeError(f"--variants {settings.variants!r} names a row twice (give each folder its own name)")
    if reason := unavailable(baseline, device):
        raise Glm4vEdgeError(f"the baseline {baseline} cannot run here: {reason}")
    not_run = {choice.label: reason for choice in chosen if (reason := unavailable(choice.name, device))}
    task_questions = settings.task_questions
    if task_questions is None:
        task_questions = EMBEDDED_TASK_QUESTIONS if settings.model is None else 0
    runnable = [choice for choice in chosen if choice.label != baseline and choice.label not in not_run]
    check_built([baseline], settings.artifacts)
    for choice in runnable:
        check_built([choice.name], choice.artifacts or settings.artifacts)
    return BenchPlan(baseline, runnable, not_run, device, task_questions)


def run_bench(settings: BenchSettings, progress: Progress = SILENT) -> tuple[dict, list[Path]]:
    """Measure every variant against the baseline; return the record and the files written."""
    from glm4v_edge.bench.bandwidth import copy_bandwidth_gbs, default_threads
    from glm4v_edge.bench.machine_peak import faster_reads, fastest_read, read_bandwidths
    from glm4v_edge.bench.report import build_record, write_report
    from glm4v_edge.bench.runner import Job, run_benchmark
    from glm4v_edge.hub import pinned
    from glm4v_edge.machine import describe_machine

    plan = plan_bench(settings)
    progress.start("bench", 3 + len(plan.variants) + len(settings.peers))
    copy_threads = settings.threads or default_threads()  # the threads the variants run on

    def bandwidths(when: str) -> dict:
        progress.step(f"measuring memory bandwidth ({when})")
        return {"copy_gbs": copy_bandwidth_gbs(plan.device, threads=copy_threads),
                "read_gbs": {} if plan.device.startswith("cuda") else read_bandwidths(copy_threads)}

    samples = [bandwidths("before the variants")]
    job = Job(variant=plan.baseline, model=settings.model, artifacts=str(settings.artifacts), device=plan.device,
              threads=settings.threads, prompt_set=settings.prompts, runs=settings.runs,
              task_questions=plan.task_questions, fidelity_prompts=settings.fidelity_prompts,
              public_set=str(settings.public_set) if settings.public_set else None,
              public_limit=settings.public_limit, reads_in_turns=not plan.device.startswith("cuda"))
    results = run_benchmark(job, plan.variants, progress)
    if settings.peers:
        from glm4v_edge.bench.latency import PROMPT_SETS
        from glm4v_edge.bench.peer import measure_peer

        for gguf in settings.peers:
            progress.step(f"measuring the llama.cpp peer ({gguf.name})")
            try:
                peer = measure_peer(gguf, copy_threads, results, PROMPT_SETS[settings.prompts].decode_tokens,
                                    settings.runs)
            except Glm4vEdgeError as error:  # a failed row, as for a variant: the measured rows are kept
                peer = {"status": "failed", "name": f"llama.cpp {gguf.name}", "error": str(error)}
            results[peer["name"]] = peer
    # Measured again after everything: on a shared machine the bandwidth drifts, and a floor must be
    # one no variant beats, so each loop's faster sample is the one the floors divide by.
    samples.append(bandwidths("after them"))
    bandwidth = max(sample["copy_gbs"] for sample in samples)
    read = faster_reads([sample["read_gbs"] for sample in samples])
    results.update({name: {"status": "not run", "name": name, "error": reason}
                    for name, reason in plan.not_run.items()})
    recorded = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()}
    recorded["peers"] = [str(gguf) for gguf in settings.peers]
    recorded.update(model=settings.model or "embedded tiny model", artifacts=pinned(settings.artifacts),
                    device=plan.device,
                    task_questions=plan.task_questions, isolation="each variant in its own spawned process")
    machine = {**describe_machine(), "copy_bandwidth_threads": copy_threads, "bandwidth_samples": samples}
    if read:  # the read-only floor's bandwidth: the fastest read-only loop, with what each loop reached
        machine.update(read_bandwidths_gbs=read, **fastest_read(read))
    record = build_record(settings.name or Path(settings.artifacts).name, recorded, machine, bandwidth, results,
                          plan.baseline)
    return record, write_report(record, settings.results_folder)
