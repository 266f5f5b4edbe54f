"""The ``glm4v-edge`` command line: options and one call per command; the work lives in the modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from glm4v_edge.bench_commands import bench_app
from glm4v_edge.cli_options import (
    ArtifactsOption,
    ConcurrencyOption,
    DeviceOption,
    HostOption,
    ModelOption,
    OverwriteOption,
    PromptCacheOption,
    ThreadsOption,
    VariantOption,
)
from glm4v_edge.console import chat_once, errors, print_bench, print_eval, print_export, print_quantized, progress_bars
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.settings import ExportSettings, Q4Settings, parse_dtypes
from glm4v_edge.files import check_output_folder
from glm4v_edge.messages import user_message
from glm4v_edge.names import ONNX_DTYPES
from glm4v_edge.pipeline import BUILD_Q4, BuildSettings, default_artifacts
from glm4v_edge.quant.settings import GptqSettings
from glm4v_edge.runtime.prompt_cache import PromptCache
from glm4v_edge.runtime.registry import load_from, variant_names
from glm4v_edge.runtime.variant import Sampling

app = typer.Typer(help="Run GLM-4.1V-9B-Thinking on cheaper hardware. With no --model, commands use the embedded "
                  "tiny model.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
tiny_app = typer.Typer(help="The embedded tiny GLM-4.1V: train, evaluate, sample its task, random larger shapes.")
export_app = typer.Typer(help="Export a checkpoint to other runtimes.")
quantize_app = typer.Typer(help="Quantize a checkpoint (GPTQ by GPTQModel).")
for sub_app, sub_name in ((tiny_app, "tiny"), (export_app, "export"), (quantize_app, "quantize")):
    app.add_typer(sub_app, name=sub_name, no_args_is_help=True)
app.add_typer(bench_app, name="bench")

DTYPES = ",".join(ONNX_DTYPES)


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
    messages = [{"role": "system", "content": system}] if system else []
    sampling = Sampling(sample, temperature, top_k, top_p, repetition_penalty, seed)
    with progress_bars() as progress:  # a hub repo's files download first
        loaded = load_from(variant, model, artifacts, device=device, threads=threads, progress=progress)
    chat_once(loaded, [*messages, user_message(prompt, images=list(image or []), video=video)], sampling,
              max_new_tokens=max_new_tokens, thinking_budget=thinking_budget, hide_thinking=hide_thinking)


@app.command()
def variants() -> None:
    """List the variant names --variant accepts."""
    typer.echo("\n".join(variant_names()))


@export_app.command("onnx")
def export_onnx(
    out: Annotated[Path, typer.Option(help="Artifacts folder to write (onnx-community layout).")],
    model: ModelOption = None,
    dtypes: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(ONNX_DTYPES)}.")] = DTYPES,
    block_size: Annotated[int, typer.Option(min=16, help="q4: weights per block.")] = Q4Settings.block_size,
    accuracy_level: Annotated[int, typer.Option(min=0, max=4, help="q4: MatMulNBits compute precision (4: int8 "
                                                "activations, fastest on CPU).")] = Q4Settings.accuracy_level,
    q4_method: Annotated[str, typer.Option(help="q4: rtn (round to nearest), hqq (data-free, optimised scales) or "
                                           "gptq (the decoder's linears from --gptq).")] = Q4Settings.method,
    gptq: Annotated[Path | None, typer.Option(help="q4: a `glm4v-edge quantize gptq` checkpoint (4-bit, no "
                                              "act-order) whose weights the q4 graphs carry.")] = None,
    vocab_bits: Annotated[int, typer.Option(help="q4: bits of the embeddings and lm_head (4 or 8).")]
    = Q4Settings.vocab_bits,
    vision_bits: Annotated[int, typer.Option(help="q4: bits of the vision encoder's linears (4 or 8).")]
    = Q4Settings.vision_bits,
    vision_kernel: Annotated[str, typer.Option(help="q4, --vision-bits 8: matmulnbits (8-bit blocks, the most "
                                               "faithful) or matmulinteger (dynamic int8, the fastest on CPU).")]
    = Q4Settings.vision_kernel,
    parity: Annotated[bool, typer.Option(help="Measure each precision against the source.")] = ExportSettings.parity,
    overwrite: OverwriteOption = False,
) -> None:
    """Vision encoder, token embedding and KV-cache decoder as ONNX, written one tensor at a time."""
    from glm4v_edge.export.onnx_export import export_onnx as run_export
    settings = ExportSettings(parse_dtypes(dtypes), Q4Settings(block_size, accuracy_level, method=q4_method,
                                                               gptq=str(gptq) if gptq else None,
                                                               vocab_bits=vocab_bits, vision_bits=vision_bits,
                                                               vision_kernel=vision_kernel),
                              parity)
    check_output_folder(out, overwrite)
    with progress_bars() as progress:
        manifest = run_export(model, out, settings, overwrite=overwrite, progress=progress)
    print_export(manifest, out)


@quantize_app.command("gptq")
def quantize_gptq(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write, inside an artifacts folder "
                                      "(e.g. artifacts/NAME/gptq-int4); the artifacts' manifest.json gets its entry.")],
    model: ModelOption = None,
    bits: Annotated[int, typer.Option(help="Bits per weight: 2, 3, 4 or 8.")] = GptqSettings.bits,
    group_size: Annotated[int, typer.Option(help="Weights per scale (-1: per channel).")] = GptqSettings.group_size,
    desc_act: Annotated[bool, typer.Option("--desc-act/--no-desc-act", help="Act-order.")] = GptqSettings.desc_act,
    sym: Annotated[bool, typer.Option("--sym/--asym", help="Symmetric (vLLM's Marlin needs it).")] = GptqSettings.sym,
    calibration: Annotated[int, typer.Option(min=1, help="Calibration samples.")] = GptqSettings.calibration,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Folder of images (+ <stem>.txt prompts, prompts.txt) or a datasets folder/parquet with image + text "
             "columns. Default: the embedded model's task, or built-in generated images for a real checkpoint.")]
    = None,
    method: Annotated[str, typer.Option(help="gptq, or rtn (round-to-nearest: the baseline).")] = GptqSettings.method,
    device: DeviceOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """GPTQ the language model's linear layers (vision, embeddings, lm_head stay as published); parity vs the source."""
    from glm4v_edge.checkpoint import load_config, resolve_model
    from glm4v_edge.quant.gptq import quantize_gptq as run_quantize
    settings = GptqSettings(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, calibration=calibration,
                            method=method)
    settings.check(load_config(resolve_model(model)).text_config)
    check_output_folder(out, overwrite)
    with progress_bars() as progress:
        manifest = run_quantize(model, out, settings, calibration_data=calibration_data, overwrite=overwrite,
                                device=device, progress=progress)
    print_quantized(manifest["variants"][settings.variant], settings.variant, out)


@app.command()
def build(
    model: ModelOption = None,
    out: Annotated[Path | None, typer.Option(help="Artifacts folder. Default: artifacts/<model name>.")] = None,
    dtypes: Annotated[str, typer.Option(help="ONNX precisions.")] = DTYPES,
    prompts: Annotated[str, typer.Option(help="Benchmark prompt set: standard or quick.")] = BuildSettings.prompts,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per stage.")] = BuildSettings.runs,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """The whole pipeline: ONNX export (all precisions) + GPTQ int4 + benchmark, into one artifacts folder."""
    from glm4v_edge.pipeline import build as run_build
    settings = BuildSettings(export=ExportSettings(parse_dtypes(dtypes), BUILD_Q4), prompts=prompts, runs=runs)
    with progress_bars() as progress:
        record, paths = run_build(model, out or default_artifacts(model), settings, device=device, threads=threads,
                                  overwrite=overwrite, progress=progress)
    print_bench(record, paths)


@app.command()
def demo(
    artifacts: ArtifactsOption = None,
    model: ModelOption = None,
    variant: Annotated[str | None, typer.Option(
        help="Variant selected at start. Default: onnx-q4 when the artifacts hold it, else torch.")] = None,
    remote_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible endpoint (vLLM, SGLang, `glm4v-edge serve`): adds the `remote` variant.")] = None,
    remote_model: Annotated[str | None, typer.Option(help="The model id served there. Default: its first.")] = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port. Default: 7860 or the next free one.")] = None,
    share: Annotated[bool, typer.Option(help="Also open a public gradio.live link.")] = False,
    concurrency: ConcurrencyOption = 1,
    queue_size: Annotated[int, typer.Option(min=1, help="Waiting requests beyond this are turned away.")] = 32,
    memory_gb: Annotated[float | None, typer.Option(
        help="Keep loaded variants and the prompt cache within this many GiB. Default: half the RAM.")] = None,
    prompt_cache_gb: PromptCacheOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """The web chat (Gradio) on any variant: streaming, collapsible thinking, images / video / PDF, stop."""
    from glm4v_edge.demo.settings import DemoSettings
    from glm4v_edge.demo.ui import launch_demo
    settings = DemoSettings.from_env(
        model=model, artifacts=artifacts, variant=variant, remote_url=remote_url, remote_model=remote_model,
        device=device, threads=threads, memory_budget_gb=memory_gb, prompt_cache_gb=prompt_cache_gb,
        concurrency_per_variant=concurrency, queue_size=queue_size)
    launch_demo(settings, host=host, port=port, share=share)


@app.command()
def serve(
    variant: VariantOption = "torch",
    model: ModelOption = None,
    artifacts: ArtifactsOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        help="The model id clients send. Default: the variant's name.")] = None,
    concurrency: ConcurrencyOption = 1,
    prompt_cache_gb: PromptCacheOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """An OpenAI-compatible /v1/chat/completions server (streaming SSE) on any variant."""
    from glm4v_edge.demo.serve import serve as run_server
    with progress_bars() as progress:
        loaded = load_from(variant, model, artifacts, device=device, threads=threads,
                           prompt_cache=PromptCache.from_gb(prompt_cache_gb), progress=progress)
    run_server(loaded, host=host, port=port, served_model=served_model_name, concurrency=concurrency)


@tiny_app.command("train")
def tiny_train(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path("artifacts/tiny-checkpoint"),
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps. Default: the tuned recipe's.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Questions per step. Default: the recipe's.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and batch order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda; the recipe was tuned on CPU.")] = "cpu",
    threads: ThreadsOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train the tiny model from scratch (about an hour on 2 CPU cores) and save it atomically."""
    from glm4v_edge.tiny.train import train_and_save
    with progress_bars() as progress:
        train_and_save(out, steps=steps, batch_size=batch_size, seed=seed, device=device, threads=threads,
                       overwrite=overwrite, progress=progress)


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
    from glm4v_edge.bench.task_accuracy import evaluate_and_record
    with progress_bars() as progress:
        report = evaluate_and_record(load_from(variant, model, artifacts, device=device, threads=threads), count,
                                     thinking_budget=thinking_budget, json_out=json_out, model=model, progress=progress)
    print_eval(report)


@tiny_app.command("sample")
def tiny_sample(
    out: Annotated[Path, typer.Option(help="Folder for the media files.")] = Path("."),
    qtype: Annotated[str, typer.Option("--type", help="count, color, shape, two_images or motion.")] = "count",
    index: Annotated[int, typer.Option(help="Which held-out sample of that type.")] = 0,
) -> None:
    """Write one held-out question's image(s) or video and print the matching chat command."""
    from glm4v_edge.shapes import write_sample
    sample, files = write_sample(out, qtype, index)
    media = " ".join(f"--video {f}" if f.suffix == ".mp4" else f"--image {f}" for f in files)
    typer.echo(f'expected answer: {sample.answer}\nglm4v-edge chat "{sample.question}" {media}')


@tiny_app.command("random")
def tiny_random(
    preset: Annotated[str, typer.Option(help="medium (1.4 B), 9b-shallow (9B widths, 2 layers) or 9b.")] = "medium",
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: artifacts/random-PRESET.")] = None,
    dtype: Annotated[str, typer.Option(help="Weight dtype: fp32, bf16 or fp16.")] = "bf16",
    config_only: Annotated[bool, typer.Option(help="Write config, tokenizer and processor, no weights.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a same-architecture checkpoint with random weights, for speed and memory measurements."""
    from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint
    out = write_random_checkpoint(preset, out, dtype=dtype, config_only=config_only, overwrite=overwrite)
    typer.echo(f"saved {out}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        app(args=argv, prog_name="glm4v-edge")
    except Glm4vEdgeError as error:
        errors.print(f"error: {error}", style="red", markup=False, soft_wrap=True)
        sys.exit(1)
