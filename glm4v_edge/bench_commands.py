"""``glm4v-edge bench``: with no command the comparison of every variant; each command below it
measures one thing more and writes ``<name>-<machine>-<date>.json`` and a Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glm4v_edge.bench.command_memory import CommandMemorySettings
from glm4v_edge.bench.decode_depth import DecodeDepthSettings
from glm4v_edge.bench.decode_profile import DecodeProfileSettings
from glm4v_edge.bench.session_options import SessionOptionsSettings
from glm4v_edge.bench.settings import BenchSettings, ConversationSettings
from glm4v_edge.bench.space_check import SpaceCheckSettings
from glm4v_edge.bench.stage_profile import StageProfileSettings
from glm4v_edge.bench.ttft import TtftSettings
from glm4v_edge.bench.vision_memory import VisionMemorySettings
from glm4v_edge.cli_options import ArtifactsOption, DeviceOption, ModelOption, ThreadsOption, VariantOption
from glm4v_edge.console import print_bench, print_written, progress_bars
from glm4v_edge.errors import Glm4vEdgeError

bench_app = typer.Typer(help="Measurements: with no command, latency, memory, size and accuracy of every variant "
                        "against the baseline, each in its own process; the commands below measure one thing more.")

OutOption = Annotated[Path | None, typer.Option(
    help="Folder for the JSON and Markdown. Default: ARTIFACTS/bench (artifacts/bench without --artifacts).")]
NameOption = Annotated[str | None, typer.Option(
    help="Report name (files NAME-MACHINE-DATE.json/.md). Default: the command's, then the artifacts folder's.")]
MeasureThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, help="CPU threads. Default: every core this process may use.")]
BuildOption = Annotated[Path, typer.Option(help="A folder made by `glm4v-edge build` / `export onnx`, or its hub "
                                           "repo, user/repo[@revision].")]
BuildsOption = Annotated[list[str], typer.Option(
    "--artifacts", help="An `export onnx` folder or hub repo, LABEL=FOLDER to name its row; repeat to compare builds.")]
DtypeOption = Annotated[str, typer.Option(help="The graphs' precision: fp32, fp16, q4, q4f16 or int8.")]


def whole_numbers(text: str, option: str) -> tuple[int, ...]:
    """'448,784' -> (448, 784); anything else is a one-line error naming the option."""
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise Glm4vEdgeError(f"{option} {text!r}: give whole numbers above 0 separated by commas, e.g. 448,784")
    return numbers


def frame_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360)."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise Glm4vEdgeError(f"--video-size {text!r}: give WIDTHxHEIGHT in pixels, e.g. 640x360")
    return int(width), int(height)


def labelled_builds(entries: list[str]) -> dict[str, Path]:
    """['before=a', 'b'] -> {'before': a, 'b': b}: each build's row label (else its folder's name)."""
    builds = {}
    for entry in entries:
        label, _, folder = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        if label in builds:
            raise Glm4vEdgeError(f"--artifacts: two builds labelled {label!r}; name each one: LABEL=FOLDER")
        builds[label] = Path(folder)
    return builds


def joined(numbers: tuple[int, ...]) -> str:
    return ",".join(map(str, numbers))


def measure_and_write(measure, markdown, settings, artifacts) -> None:
    """``measure(settings, progress)`` under progress bars, then its record and table written to
    ``settings.out`` (default: beside ``artifacts``) and the files printed."""
    from glm4v_edge.bench.records import results_folder, write_record

    with progress_bars() as progress:
        record = measure(settings, progress)
    print_written(write_record(record, results_folder(settings.out, artifacts), markdown(record)))


@bench_app.callback(invoke_without_command=True)
def bench(
    context: typer.Context,
    artifacts: Annotated[Path | None, typer.Option(help="Artifacts folder (ONNX export and/or GPTQ checkpoints); "
                                                   "required without a command.")] = None,
    model: ModelOption = None,
    variants: Annotated[str, typer.Option(help="'all' (what the artifacts hold) or a comma-separated list; "
                                          "NAME@FOLDER takes that variant from another build.")] = "all",
    baseline: Annotated[str | None, typer.Option(
        help="Any variant (torch-bf16, onnx-q4...). Default: torch-fp32 on CPU, torch-bf16 on CUDA.")] = None,
    prompts: Annotated[str, typer.Option(help="Prompt set: standard (3 image sizes, 3 lengths), quick, gpu, cpu "
                                         "(the 9B on 2 cores), none (accuracy only).")] = BenchSettings.prompts,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per stage after one warm-up.")] = BenchSettings.runs,
    task_questions: Annotated[int | None, typer.Option(
        help="Held-out shapes-task questions per variant. Default: 100 for the embedded model, 0 otherwise.")] = None,
    fidelity_prompts: Annotated[int, typer.Option(min=0, help="Held-out prompts for fidelity, beside the four parity "
                                                  "prompts.")] = BenchSettings.fidelity_prompts,
    public_set: Annotated[Path | None, typer.Option(
        help="A local multiple-choice benchmark (datasets folder or parquet: MMStar, MMBench, MathVista).")] = None,
    public_limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N public questions.")] = None,
    device: DeviceOption = None, threads: ThreadsOption = None,
    out: Annotated[Path | None, typer.Option(help="Folder for JSON, Markdown, PNGs. Default: ARTIFACTS/bench.")] = None,
    name: Annotated[str | None, typer.Option(help="Report name. Default: the artifacts folder's name.")] = None,
    peer: Annotated[list[Path] | None, typer.Option(
        help="GGUF of the decoder: a llama.cpp row (llama-bench); repeat for several quantizations.")] = None,
) -> None:
    """Latency, memory, size and accuracy of every variant against the baseline, each in its own process."""
    if context.invoked_subcommand is not None:
        return
    if artifacts is None:
        raise typer.BadParameter("the variants' artifacts folder is required", param_hint="'--artifacts'")
    from glm4v_edge.bench.benchmark import run_bench
    settings = BenchSettings(artifacts, model, variants, baseline, prompts, runs, task_questions, fidelity_prompts,
                             public_set, public_limit, device, threads, out, name, tuple(peer or ()))
    with progress_bars() as progress:
        record, paths = run_bench(settings, progress)
    print_bench(record, paths)


@bench_app.command("conversation")
def bench_conversation(
    artifacts: ArtifactsOption = None,
    model: ModelOption = None,
    variant: VariantOption = ConversationSettings.variant,
    threads: ThreadsOption = None,
    image_px: Annotated[int, typer.Option(min=28, help="Side of turn one's image.")] = ConversationSettings.image_px,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per reply.")] = ConversationSettings.max_tokens,
    prompt_cache_gb: Annotated[float, typer.Option(min=0.001, help="The cached run's --prompt-cache-gb.")]
    = ConversationSettings.prompt_cache_gb,
    answer_words: Annotated[int, typer.Option(min=0, help="0: the history holds the model's answers (as the demo "
                                              "sends them); N: each answer is a fixed N-word text.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown.")] = ConversationSettings.out,
    name: Annotated[str, typer.Option(help="Report name.")] = ConversationSettings.name,
) -> None:
    """Three turns about one image through `glm4v-edge serve`: time to first token and memory of each, with the
    prompt cache and without it, in one run."""
    from glm4v_edge.bench.conversation import measure_conversation
    settings = ConversationSettings(artifacts, model, variant, threads, image_px, max_tokens, prompt_cache_gb,
                                    answer_words, out, name)
    with progress_bars() as progress:
        _, paths = measure_conversation(settings, progress)
    print_written(paths)


@bench_app.command("decode-depth")
def bench_decode_depth(
    artifacts: BuildOption,
    dtype: DtypeOption = DecodeDepthSettings.dtype,
    depths: Annotated[str, typer.Option(help="Cached positions before the timed steps, comma-separated.")]
    = joined(DecodeDepthSettings.depths),
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per measurement.")] = DecodeDepthSettings.steps,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved repetitions (medians reported).")]
    = DecodeDepthSettings.rounds,
    peer: Annotated[Path | None, typer.Option(help="A GGUF of the same decoder: llama-bench at each depth.")] = None,
    threads: MeasureThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """Decode ms/token after long contexts: the ONNX decoder's cache per step vs in place, and llama.cpp."""
    from glm4v_edge.bench.decode_depth import markdown, measure_decode_depth
    settings = DecodeDepthSettings(artifacts, dtype, whole_numbers(depths, "--depths"), steps, rounds, threads, peer,
                                   out, name)
    measure_and_write(measure_decode_depth, markdown, settings, artifacts)


@bench_app.command("decode-profile")
def bench_decode_profile(
    artifacts: BuildsOption,
    dtype: DtypeOption = DecodeProfileSettings.dtype,
    past: Annotated[int, typer.Option(min=0, help="Cached positions before the timed token.")]
    = DecodeProfileSettings.past,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per graph.")] = DecodeProfileSettings.steps,
    threads: MeasureThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """Where one decode step goes, by operator type (onnxruntime's profiler), for each build."""
    from glm4v_edge.bench.decode_profile import markdown, measure_decode_profile
    builds = labelled_builds(artifacts)
    settings = DecodeProfileSettings(builds, dtype, past, steps, threads, out, name)
    measure_and_write(measure_decode_profile, markdown, settings, next(iter(builds.values())))


@bench_app.command("session-options")
def bench_session_options(
    artifacts: BuildOption,
    dtype: DtypeOption = SessionOptionsSettings.dtype,
    cases: Annotated[str, typer.Option(help="Comma-separated cases, each against onnxruntime's defaults (measured "
                                       "too). Default: all of them.")] = ",".join(SessionOptionsSettings.cases),
    past: Annotated[int, typer.Option(min=0, help="Cached positions before the timed decode steps.")]
    = SessionOptionsSettings.past,
    steps: Annotated[int, typer.Option(min=1, help="Timed decode steps per case and round.")]
    = SessionOptionsSettings.steps,
    prefill: Annotated[int, typer.Option(min=0, help="Prompt tokens of the timed prefill (0: none).")]
    = SessionOptionsSettings.prefill,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved repetitions (medians reported).")]
    = SessionOptionsSettings.rounds,
    threads: MeasureThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """The decoder's prefill and decode under onnxruntime's session options (spinning, memory
    arena, optimisation level, denormals, thread-pool block size, threads), side by side."""
    from glm4v_edge.bench.session_options import markdown, measure_session_options
    settings = SessionOptionsSettings(artifacts, dtype, tuple(part.strip() for part in cases.split(",")), past, steps,
                                      prefill, rounds, threads, out, name)
    measure_and_write(measure_session_options, markdown, settings, artifacts)


@bench_app.command("stage-profile")
def bench_stage_profile(
    artifacts: BuildOption,
    dtype: DtypeOption = StageProfileSettings.dtype,
    size: Annotated[int, typer.Option(min=28, help="The image's side, px.")] = StageProfileSettings.size,
    decode_steps: Annotated[int, typer.Option(min=1, help="Reply tokens after the first (their mean is the "
                                              "decode stage).")] = StageProfileSettings.decode_steps,
    threads: MeasureThreadsOption = None,
    gemm_size: Annotated[int, typer.Option(min=128, help="The peak's GEMMs: M = K = N (smaller: quicker, less "
                                           "exact).")] = StageProfileSettings.gemm_size,
    read_mib: Annotated[int, typer.Option(min=16, help="The read-only loops' array, MiB (keep it past the "
                                          "caches).")] = StageProfileSettings.read_mib,
    out: OutOption = None, name: NameOption = None,
) -> None:
    """The first answer by stage (vision, prefill, decode step) and operator type, beside this
    machine's measured compute peaks and read-only bandwidth."""
    from glm4v_edge.bench.stage_profile import markdown, measure_stage_profile
    settings = StageProfileSettings(artifacts, dtype, size, decode_steps, threads, gemm_size, read_mib, out, name)
    measure_and_write(measure_stage_profile, markdown, settings, artifacts)


@bench_app.command("ttft")
def bench_ttft(
    artifacts: ArtifactsOption = None,
    model: ModelOption = None,
    variant: VariantOption = TtftSettings.variant,
    sizes: Annotated[str, typer.Option(help="Square image sides in px, comma-separated.")] = joined(TtftSettings.sizes),
    runs: Annotated[int, typer.Option(min=1, help="Timed questions per size (median).")] = TtftSettings.runs,
    video_frames: Annotated[int, typer.Option(min=0, help="Frames of a video question too (0: none).")]
    = TtftSettings.video_frames,
    video_size: Annotated[str, typer.Option(help="The video's frame size, WIDTHxHEIGHT.")]
    = "x".join(map(str, TtftSettings.video_size)),
    threads: MeasureThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """Time to first token of a one-image question by image size, on CPU (the CPU profile's measurement)."""
    from glm4v_edge.bench.ttft import markdown, measure_ttft
    settings = TtftSettings(artifacts, model, variant, whole_numbers(sizes, "--sizes"), runs, threads, video_frames,
                            frame_size(video_size), out, name)
    measure_and_write(measure_ttft, markdown, settings, artifacts)


@bench_app.command("vision-memory")
def bench_vision_memory(
    artifacts: BuildsOption,
    dtype: DtypeOption = VisionMemorySettings.dtype,
    sizes: Annotated[str, typer.Option(help="Square image sides in px, comma-separated.")]
    = joined(VisionMemorySettings.sizes),
    video_frames: Annotated[int, typer.Option(min=0, help="Frames of the video case (0: none).")]
    = VisionMemorySettings.video_frames,
    video_size: Annotated[int, typer.Option(min=28, help="The video's square frame side, px.")]
    = VisionMemorySettings.video_size,
    threads: MeasureThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """Peak memory and time of the ONNX vision encoder alone, per image size and a video, each in a fresh process."""
    from glm4v_edge.bench.vision_memory import markdown, measure_vision_memory
    builds = labelled_builds(artifacts)
    settings = VisionMemorySettings(builds, dtype, whole_numbers(sizes, "--sizes"), video_frames, video_size,
                                    threads, out, name)
    measure_and_write(measure_vision_memory, markdown, settings, next(iter(builds.values())))


@bench_app.command("space-check")
def bench_space_check(
    artifacts: BuildOption,
    model: ModelOption = None,
    variant: VariantOption = SpaceCheckSettings.variant,
    memory_gb: Annotated[float, typer.Option(min=0.1, help="The demo's --memory-gb.")] = SpaceCheckSettings.memory_gb,
    image_px: Annotated[int, typer.Option(min=28, help="Side of the question's image.")] = SpaceCheckSettings.image_px,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens of the measured reply.")]
    = SpaceCheckSettings.max_new_tokens,
    threads: ThreadsOption = None, out: OutOption = None, name: NameOption = None,
) -> None:
    """The demo as a Space runs it: `glm4v-edge demo` asked one image question through gradio_client."""
    from glm4v_edge.bench.space_check import markdown, measure_space_check
    settings = SpaceCheckSettings(artifacts, model, variant, memory_gb, image_px, max_new_tokens, threads, out, name)
    measure_and_write(measure_space_check, markdown, settings, artifacts)


@bench_app.command("record")
def bench_record(
    name: Annotated[str, typer.Option(help="Report name (files NAME-MACHINE-DATE.json/.md).")],
    commands: Annotated[list[str], typer.Argument(help="Shell commands, each one argument (after --).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the JSON and Markdown. Default: artifacts/bench.")]
    = None,
) -> None:
    """Run commands one after another: wall time and peak memory of each one's whole process tree."""
    from glm4v_edge.bench.command_memory import markdown, record_commands
    from glm4v_edge.bench.records import results_folder, write_record
    folder, written = results_folder(out, None), []

    def save(record: dict) -> None:  # after each command: a long series keeps what it measured
        written[:] = write_record(record, folder, markdown(record))
    with progress_bars() as progress:
        record_commands(CommandMemorySettings(name, tuple(commands), out), progress, save)
    print_written(written)


@bench_app.command("index")
def bench_index(
    results: Annotated[Path, typer.Option(help="The results folder.")] = Path("benchmarks/results"),
    check: Annotated[bool, typer.Option("--check", help="Only check that its README.md is up to date.")] = False,
) -> None:
    """Write the results folder's README.md: one row per result JSON, its companions, what supersedes it."""
    from glm4v_edge.bench.results_index import check_index, write_index
    if check:
        check_index(results)
        typer.echo(f"{results / 'README.md'} is up to date")
    else:
        typer.echo(f"wrote {write_index(results)}")
