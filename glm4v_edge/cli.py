"""The ``glm4v-edge`` command line: subcommands only; the work lives in the modules."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from glm4v_edge.errors import Glm4vEdgeError

app = typer.Typer(
    help="Run GLM-4.1V-9B-Thinking on cheaper hardware. With no --model, commands use the embedded tiny model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tiny_app = typer.Typer(help="The embedded tiny GLM-4.1V: train, evaluate, sample its task, random larger shapes.",
                       no_args_is_help=True)
app.add_typer(tiny_app, name="tiny")
export_app = typer.Typer(help="Export a checkpoint to other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")
quantize_app = typer.Typer(help="Quantize a checkpoint (GPTQ by GPTQModel).", no_args_is_help=True)
app.add_typer(quantize_app, name="quantize")

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id (e.g. zai-org/GLM-4.1V-9B-Thinking) or checkpoint folder. "
                 "Default: the embedded tiny model."),
]
VariantOption = Annotated[str, typer.Option("--variant", help="Which variant to run (see `glm4v-edge variants`).")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... Default: cuda if available.")]
ArtifactsOption = Annotated[Path | None, typer.Option(
    "--artifacts", help="Folder made by `glm4v-edge export onnx`, for the onnx-* variants.")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads. Default: the runtime's.")]


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=errors,
    )


def variant_options(device: str | None, artifacts: Path | None = None, threads: int | None = None) -> dict:
    options = {"device": device, "artifacts": artifacts, "threads": threads}
    return {key: value for key, value in options.items() if value is not None}


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    image: Annotated[list[Path] | None, typer.Option("--image", "-i", help="Image file; repeat for several.")] = None,
    video: Annotated[Path | None, typer.Option("--video", help="Video file (sampled at the processor's fps).")] = None,
    model: ModelOption = None,
    variant: VariantOption = "torch",
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    thinking_budget: Annotated[int | None, typer.Option(
        "--thinking-budget", min=0, help="Force </think><answer> after N thinking tokens; 0 answers at once.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Upper bound on reply tokens.")] = 1024,
    sample: Annotated[bool | None, typer.Option(
        "--sample/--greedy", help="Sample or decode greedily. Default: the checkpoint's generation_config.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k sampling.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Top-p (nucleus) sampling.")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(help="Repetition penalty (1.0: none).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    hide_thinking: Annotated[bool, typer.Option("--hide-thinking", help="Print only the answer.")] = False,
    device: DeviceOption = None,
    artifacts: ArtifactsOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Ask one question, with optional images or a video; streams thinking (dimmed) and the answer."""
    from glm4v_edge.runtime import Sampling, load_variant
    from glm4v_edge.runtime.inputs import user_message
    from glm4v_edge.thinking import ReplyParser

    messages = [{"role": "system", "content": system}] if system else []
    messages.append(user_message(prompt, images=list(image or []), video=video))
    runner = load_variant(variant, model, **variant_options(device, artifacts, threads))
    sampling = Sampling(
        do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed,
    )
    stop = threading.Event()
    parser = ReplyParser()
    count, first, last, channel = 0, None, 0.0, None
    try:
        for event in runner.generate(messages, max_new_tokens=max_new_tokens, sampling=sampling,
                                     thinking_budget=thinking_budget, stop=stop):
            count += 1
            first = event.elapsed_s if first is None else first
            last = event.elapsed_s
            for piece in parser.feed(event.text):
                if piece.channel == "thinking" and hide_thinking:
                    continue
                if channel == "thinking" and piece.channel == "answer" and not hide_thinking:
                    console.print()
                    console.print()
                channel = piece.channel
                style = "dim" if piece.channel == "thinking" else ("bold" if piece.in_box else None)
                console.print(piece.text, style=style, end="", markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        stop.set()
        errors.print("\n[interrupted]")
    console.print()
    if count and first is not None:
        rate = (count - 1) / (last - first) if count > 1 and last > first else float("nan")
        errors.print(
            f"{count} tokens · {rate:.1f} tokens/s decode · first token after {first:.2f} s · {runner.name}",
            style="dim",
        )


@app.command()
def variants() -> None:
    """List the variant names --variant accepts."""
    from glm4v_edge.runtime import variant_names

    for name in variant_names():
        console.print(name)


@export_app.command("onnx")
def export_onnx(
    out: Annotated[Path, typer.Option(help="Artifacts folder to write (onnx-community layout).")],
    model: ModelOption = None,
    dtypes: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, q4, q4f16, int8.")] = "fp32,fp16,q4,q4f16,int8",
    block_size: Annotated[int, typer.Option(min=16, help="q4: weights per quantization block (a power of 2).")] = 128,
    accuracy_level: Annotated[int, typer.Option(
        min=0, max=4, help="q4: MatMulNBits compute precision (4: int8 activations, fastest on CPU; 0: as the input).")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifacts folder.")] = False,
) -> None:
    """Vision encoder, token embedding and KV-cache decoder as ONNX, with parity measured against torch fp32."""
    from glm4v_edge.export.onnx_export import export_onnx as run_export
    from glm4v_edge.export.onnx_export import export_step_count
    from glm4v_edge.export.precisions import Q4Settings, parse_dtypes
    from glm4v_edge.files import check_output_folder

    chosen = parse_dtypes(dtypes)
    check_output_folder(out, overwrite)
    q4 = Q4Settings(block_size=block_size, accuracy_level=accuracy_level)
    with progress_bar() as progress:
        bar = progress.add_task("export", total=export_step_count(chosen), status="")

        started = []

        def report(step: str) -> None:  # a step starts: the previous one is done
            progress.update(bar, completed=len(started), status=step)
            started.append(step)

        manifest = run_export(model, out, chosen, overwrite=overwrite, q4=q4, report=report)
        progress.update(bar, completed=export_step_count(chosen), status="done")
    table = Table(title=f"parity against torch fp32 · greedy match of {manifest['parity']['new_tokens']} new tokens")
    for column in ("dtype", "prompt", "greedy match", "top-1 agreement", "mean KL"):
        table.add_column(column, justify="left" if column in ("dtype", "prompt") else "right")
    for dtype, results in manifest["parity"]["results"].items():
        for prompt, result in results.items():
            table.add_row(dtype, prompt, f"{result['greedy_match']}/{result['reference_tokens']}",
                          f"{result['top1_agreement']:.1%}", f"{result['mean_kl']:.2e}")
    console.print(table)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    console.print(f"wrote {out} ({size / 1e6:.1f} MB); chat with it: "
                  f"glm4v-edge chat \"...\" --variant onnx-{chosen[-1]} --artifacts {out}", soft_wrap=True)


@quantize_app.command("gptq")
def quantize_gptq(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write, inside an artifacts folder "
                                      "(e.g. artifacts/NAME/gptq-int4); the artifacts' manifest.json gets its entry.")],
    model: ModelOption = None,
    bits: Annotated[int, typer.Option(help="Bits per weight: 2, 3, 4 or 8.")] = 4,
    group_size: Annotated[int, typer.Option(help="Weights per scale (-1: one per output channel).")] = 128,
    desc_act: Annotated[bool, typer.Option("--desc-act/--no-desc-act", help="Act-order (columns by activation size).")] = False,
    sym: Annotated[bool, typer.Option("--sym/--asym", help="Symmetric quantization (vLLM's Marlin needs it).")] = True,
    calibration: Annotated[int, typer.Option(min=1, help="Calibration samples.")] = 128,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Folder of images (+ <stem>.txt prompts, prompts.txt) or a datasets folder/parquet with image + text "
             "columns. Default: the embedded model's task, or built-in generated images for a real checkpoint.")] = None,
    method: Annotated[str, typer.Option(help="gptq, or rtn (round-to-nearest, no calibration: the baseline).")] = "gptq",
    device: DeviceOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """GPTQ the language model's linear layers (vision, embeddings, lm_head stay as published); parity vs the source."""
    from glm4v_edge.checkpoint import load_config, resolve_model
    from glm4v_edge.files import check_output_folder
    from glm4v_edge.quant.settings import GptqSettings

    settings = GptqSettings(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym,
                            calibration=calibration, method=method)
    text_config = load_config(resolve_model(model)).text_config
    settings.check(text_config)
    check_output_folder(out, overwrite)
    from glm4v_edge.quant.gptq import quantize_gptq as run_quantize
    from glm4v_edge.quant.vllm import serve_command, vllm_problems

    steps = 3 + (method == "gptq") + text_config.num_hidden_layers + 2
    with progress_bar() as progress:
        bar = progress.add_task(settings.variant, total=steps, status="")
        started = []

        def report(step: str) -> None:  # a step starts: the previous one is done
            progress.update(bar, completed=len(started), status=step)
            started.append(step)

        entry = run_quantize(model, out, settings, calibration_data=calibration_data, overwrite=overwrite,
                             device=device, report=report, warn=lambda message: errors.print(f"warning: {message}"))
        progress.update(bar, completed=steps, status="done")
    variants = entry["variants"][settings.variant]
    table = Table(title=f"parity against the source ({variants['parity']['reference']}) · "
                        f"greedy match of {variants['parity']['new_tokens']} new tokens")
    for column in ("prompt", "greedy match", "top-1 agreement", "mean KL"):
        table.add_column(column, justify="left" if column == "prompt" else "right")
    for prompt, result in variants["parity"]["results"].items():
        table.add_row(prompt, f"{result['greedy_match']}/{result['reference_tokens']}",
                      f"{result['top1_agreement']:.1%}", f"{result['mean_kl']:.2e}")
    console.print(table)
    for problem in vllm_problems(json.loads((out / "config.json").read_text())["quantization_config"]):
        errors.print(f"vLLM: {problem}", style="yellow")
    console.print(f"serve it with vLLM (GPU): {serve_command(str(out))}", soft_wrap=True)
    console.print(f"wrote {out}: {variants['decoder_bits_per_weight']} bits per decoder weight, "
                  f"{len(variants['calibration']['samples'])} calibration samples; chat with it: "
                  f"glm4v-edge chat \"...\" --variant {settings.variant} --artifacts {out.parent}", soft_wrap=True)


BaselineOption = Annotated[str | None, typer.Option(
    help="torch-fp32, torch-fp16 or torch-bf16. Default: fp32 on CPU, bf16 on CUDA.")]


def run_bench(artifacts: Path, model: str | None, variants: str, baseline: str | None, prompts: str, runs: int,
              task_questions: int | None, public_set: Path | None, public_limit: int | None, device: str | None,
              threads: int | None, out: Path, name: str | None) -> dict:
    from glm4v_edge.bench.bandwidth import copy_bandwidth_gbs
    from glm4v_edge.bench.latency import PROMPT_SETS
    from glm4v_edge.bench.report import build_record, write_report
    from glm4v_edge.bench.runner import Job, run_benchmark
    from glm4v_edge.checkpoint import default_device
    from glm4v_edge.machine import describe_machine
    from glm4v_edge.runtime import built_variants, variant_names

    if prompts not in PROMPT_SETS:
        raise Glm4vEdgeError(f"unknown prompt set {prompts!r}; choose {', '.join(PROMPT_SETS)}")
    device = device or default_device()
    baseline = baseline or ("torch-bf16" if device.startswith("cuda") else "torch-fp32")
    if baseline not in ("torch-fp32", "torch-fp16", "torch-bf16"):
        raise Glm4vEdgeError(f"--baseline must be torch-fp32, torch-fp16 or torch-bf16, not {baseline!r}")
    chosen = built_variants(artifacts) if variants == "all" else [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in variant_names()]
    if unknown:
        raise Glm4vEdgeError(f"unknown variant(s): {', '.join(unknown)}; see `glm4v-edge variants`")
    if task_questions is None:
        task_questions = 100 if model is None else 0  # the held-out task only means something to the embedded model
    job = Job(variant=baseline, model=model, artifacts=str(artifacts), device=device, threads=threads,
              prompt_set=prompts, runs=runs, task_questions=task_questions,
              public_set=str(public_set) if public_set else None, public_limit=public_limit)
    steps = 2 + len([v for v in chosen if v != baseline])
    with progress_bar() as progress:
        bar = progress.add_task("bench", total=steps, status="measuring memory bandwidth")
        bandwidth = copy_bandwidth_gbs(device)
        done = [1]

        def report(step: str) -> None:
            progress.update(bar, completed=done[0], status=step)
            done[0] += 1

        results = run_benchmark(job, chosen, report)
        settings = {"artifacts": str(artifacts), "model": model or "embedded tiny model", "device": device,
                    "threads": threads, "prompt_set": prompts, "runs": runs, "task_questions": task_questions,
                    "public_set": job.public_set, "isolation": "each variant in its own spawned process"}
        record = build_record(name or artifacts.name, settings, describe_machine(), bandwidth, results, baseline)
        paths = write_report(record, out)
        progress.update(bar, completed=steps, status="done")
    for variant, row in record["summary"].items():
        if row["status"] != "ok":
            errors.print(f"{variant}: failed: {row['error']}", style="red")
    console.print(paths[1].read_text(), markup=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)
    return record


@app.command()
def bench(
    artifacts: Annotated[Path, typer.Option(help="Artifacts folder (ONNX export and/or GPTQ checkpoints).")],
    model: ModelOption = None,
    variants: Annotated[str, typer.Option(help="'all' (what the artifacts hold) or a comma-separated list.")] = "all",
    baseline: BaselineOption = None,
    prompts: Annotated[str, typer.Option(help="Prompt set: standard (3 image sizes, 3 lengths) or quick.")] = "standard",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per stage after one warm-up.")] = 5,
    task_questions: Annotated[int | None, typer.Option(
        help="Held-out task questions per variant. Default: 100 for the embedded model, 0 otherwise.")] = None,
    public_set: Annotated[Path | None, typer.Option(
        help="A local multiple-choice benchmark (datasets folder or parquet: MMStar, MMBench, MathVista).")] = None,
    public_limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N public questions.")] = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    out: Annotated[Path, typer.Option(help="Where the JSON, Markdown and PNGs go.")] = Path("benchmarks/results"),
    name: Annotated[str | None, typer.Option(help="Report name. Default: the artifacts folder's name.")] = None,
) -> None:
    """Latency, memory, size and accuracy of every variant against the baseline, each in its own process."""
    run_bench(artifacts, model, variants, baseline, prompts, runs, task_questions, public_set, public_limit,
              device, threads, out, name)


@app.command()
def build(
    model: ModelOption = None,
    out: Annotated[Path | None, typer.Option(help="Artifacts folder. Default: artifacts/<model name>.")] = None,
    dtypes: Annotated[str, typer.Option(help="ONNX precisions.")] = "fp32,fp16,q4,q4f16,int8",
    prompts: Annotated[str, typer.Option(help="Benchmark prompt set: standard or quick.")] = "quick",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per stage.")] = 3,
    results: Annotated[Path, typer.Option(help="Where the benchmark report goes.")] = Path("benchmarks/results"),
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifacts folder.")] = False,
) -> None:
    """The whole pipeline: ONNX export (all precisions) + GPTQ int4 + benchmark, on the embedded model by default."""
    from glm4v_edge.checkpoint import resolve_model
    from glm4v_edge.export.precisions import parse_dtypes
    from glm4v_edge.files import check_output_folder

    source = resolve_model(model)
    out = out or Path("artifacts") / ("tiny" if model is None else Path(source).name.lower())
    check_output_folder(out, overwrite)
    console.print(f"[bold]1/3[/bold] ONNX export ({dtypes}) -> {out}")
    export_onnx(out=out, model=model, dtypes=",".join(parse_dtypes(dtypes)), block_size=128, accuracy_level=4,
                overwrite=overwrite)
    console.print(f"[bold]2/3[/bold] GPTQ int4 -> {out / 'gptq-int4'}")
    quantize_gptq(out=out / "gptq-int4", model=model, bits=4, group_size=128, desc_act=False, sym=True,
                  calibration=128, calibration_data=None, method="gptq", device=device, overwrite=False)
    console.print("[bold]3/3[/bold] benchmark")
    run_bench(out, model, "all", None, prompts, runs, None, None, None, device, threads, results, None)


@app.command()
def demo(
    artifacts: Annotated[Path | None, typer.Option(
        help="A `glm4v-edge build` folder: its ONNX and GPTQ variants join the picker.")] = None,
    model: ModelOption = None,
    variant: Annotated[str | None, typer.Option(
        help="Variant selected at start. Default: onnx-q4 when the artifacts hold it, else torch.")] = None,
    remote_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible endpoint (vLLM, SGLang, `glm4v-edge serve`): adds the `remote` variant.")] = None,
    remote_model: Annotated[str | None, typer.Option(help="The model id served there. Default: its first.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port. Default: 7860 or the next free one.")] = None,
    share: Annotated[bool, typer.Option(help="Also open a public gradio.live link.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Generations at once per variant.")] = 1,
    queue_size: Annotated[int, typer.Option(min=1, help="Waiting requests beyond this are turned away.")] = 32,
    memory_gb: Annotated[float | None, typer.Option(
        help="Keep loaded variants within this many GiB. Default: half the RAM.")] = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """The web chat (Gradio) on any variant: streaming, collapsible thinking, images / video / PDF, stop."""
    from glm4v_edge.demo.settings import DemoSettings
    from glm4v_edge.demo.ui import launch_demo

    settings = DemoSettings.from_env(
        model=model, artifacts=artifacts, variant=variant, remote_url=remote_url, remote_model=remote_model,
        device=device, threads=threads, memory_budget_gb=memory_gb, concurrency_per_variant=concurrency,
        queue_size=queue_size,
    )
    launch_demo(settings, host=host, port=port, share=share)


@app.command()
def serve(
    variant: VariantOption = "torch",
    model: ModelOption = None,
    artifacts: Annotated[Path | None, typer.Option(help="A `glm4v-edge build` folder, for its variants.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        help="The model id clients send. Default: the variant's name.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Generations at once; more wait.")] = 1,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """An OpenAI-compatible /v1/chat/completions server (streaming SSE) on any variant."""
    from glm4v_edge.demo.serve import serve as run_server
    from glm4v_edge.runtime.registry import load_from

    runner = load_from(variant, model, artifacts, **variant_options(device, threads=threads))
    errors.print(f"serving {runner.name} at http://{host}:{port}/v1 (model id: {served_model_name or runner.name})")
    run_server(runner, host=host, port=port, served_model=served_model_name, concurrency=concurrency)


@tiny_app.command("train")
def tiny_train(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path("artifacts/tiny-checkpoint"),
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps. Default: the tuned recipe's (4000).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Questions per step. Default: the recipe's (32).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and batch order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda; the recipe was tuned on CPU.")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads. Default: torch's choice.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing checkpoint at --out.")] = False,
) -> None:
    """Train the tiny model from scratch (about an hour on 2 CPU cores) and save it atomically."""
    import torch

    from glm4v_edge.files import check_output_folder
    from glm4v_edge.tiny import train

    check_output_folder(out, overwrite)  # before training, not after an hour of it
    if threads:
        torch.set_num_threads(threads)
    chosen = {"steps": steps, "batch_size": batch_size}
    settings = train.TrainSettings(seed=seed, device=device, **{k: v for k, v in chosen.items() if v is not None})
    with progress_bar() as progress:
        bar = progress.add_task("training", total=settings.steps, status="")
        accuracy = "-"

        def on_step(state: train.TrainState) -> None:
            nonlocal accuracy
            if state.probe_accuracy is not None:
                accuracy = f"{state.probe_accuracy:.0%}"
            progress.update(bar, completed=state.step, status=f"loss {state.loss:.3f} · probe {accuracy}")

        result = train.train(settings, on_step=on_step)
    train.save_trained(result, out, overwrite=overwrite)
    console.print(f"saved {out} after {result.seconds / 60:.1f} minutes of training "
                  f"(probe accuracy {result.probes[-1].probe_accuracy:.0%}); "
                  f"check it with: glm4v-edge tiny eval --model {out}", soft_wrap=True)


@tiny_app.command("eval")
def tiny_eval(
    model: ModelOption = None,
    variant: VariantOption = "torch",
    count: Annotated[int, typer.Option(min=1, help="Held-out questions (question types in rotation).")] = 500,
    thinking_budget: Annotated[int | None, typer.Option(min=0, help="Thinking budget for every reply.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    device: DeviceOption = None,
    artifacts: ArtifactsOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Greedy exact-match accuracy on held-out questions, overall and per question type."""
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine
    from glm4v_edge.runtime import load_variant
    from glm4v_edge.tiny.eval import evaluate

    runner = load_variant(variant, model, **variant_options(device, artifacts, threads))
    started = time.perf_counter()
    with progress_bar() as progress:
        bar = progress.add_task(f"eval {runner.name}", total=count, status="")
        correct = 0

        def on_sample(outcome) -> None:
            nonlocal correct
            correct += outcome.correct
            progress.update(bar, advance=1, status=f"{correct}/{outcome.index + 1} right")

        report = evaluate(runner, count, thinking_budget=thinking_budget, on_sample=on_sample)
    table = Table(title=f"held-out exact match · {runner.name}")
    for column in ("question type", "correct", "total", "accuracy"):
        table.add_column(column, justify="left" if column == "question type" else "right")
    for qtype, (right, total) in report.per_type().items():
        table.add_row(qtype, str(right), str(total), f"{right / total:.1%}")
    table.add_row("overall", str(sum(o.correct for o in report.outcomes)), str(count), f"{report.accuracy():.1%}",
                  style="bold")
    console.print(table)
    if json_out:
        record = {
            "command": " ".join(["glm4v-edge", *sys.argv[1:]]),
            "model": model or "embedded tiny model",
            "thinking_budget": thinking_budget,
            "seconds": round(time.perf_counter() - started, 1),
            **report.to_dict(),
            "machine": describe_machine(),
        }
        atomic_write_text(json_out, json.dumps(record, indent=2) + "\n")


@tiny_app.command("sample")
def tiny_sample(
    out: Annotated[Path, typer.Option(help="Folder for the media files.")] = Path("."),
    qtype: Annotated[str, typer.Option("--type", help="count, color, shape, two_images or motion.")] = "count",
    index: Annotated[int, typer.Option(help="Which held-out sample of that type.")] = 0,
) -> None:
    """Write one held-out question's image(s) or video and print the matching chat command."""
    from glm4v_edge.tiny import task
    from glm4v_edge.tiny.samples import write_sample

    if qtype not in task.QUESTION_TYPES:
        raise Glm4vEdgeError(f"unknown question type {qtype!r}; choose one of: {', '.join(task.QUESTION_TYPES)}")
    sample, files = write_sample(out, qtype, index)
    media = " ".join(f"--video {f}" if f.suffix == ".mp4" else f"--image {f}" for f in files)
    console.print(f"expected answer: {sample.answer}")
    console.print(f'glm4v-edge chat "{sample.question}" {media}', markup=False, soft_wrap=True)


@tiny_app.command("random")
def tiny_random(
    preset: Annotated[str, typer.Option(help="medium (~1.4 B, CPU latency work) or 9b (the real shape).")] = "medium",
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: artifacts/random-PRESET.")] = None,
    dtype: Annotated[str, typer.Option(help="Weight dtype: fp32, bf16 or fp16.")] = "bf16",
    config_only: Annotated[bool, typer.Option(help="Write config, tokenizer and processor, no weights.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder at --out.")] = False,
) -> None:
    """Write a same-architecture checkpoint with random weights, for speed measurements."""
    from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint

    out = out or Path(f"artifacts/random-{preset}")
    write_random_checkpoint(preset, out, dtype=dtype, config_only=config_only, overwrite=overwrite)
    console.print(f"saved {out}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        app(prog_name="glm4v-edge")
    except Glm4vEdgeError as error:
        errors.print(f"error: {error}", style="red", markup=False, soft_wrap=True)
        sys.exit(1)
