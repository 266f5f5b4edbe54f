"""``glm4v-edge quantize gptq``: a GLM-4.1V checkpoint -> a GPTQ checkpoint, by GPTQModel.

Only the language model's linear layers are quantized (GPTQModel's glm4v definition); the
vision tower, patch merger, embeddings and lm_head keep the source precision. Calibration runs
the whole multimodal model on chat-template prompts with images, so each decoder layer is fitted
to the activations image tokens produce. The result is a plain Hugging Face checkpoint in GLM's
own tensor layout (see ``layout.py``), written through a staging folder, with parity against the
source measured on the export's fixed prompts and an entry in the artifacts' manifest.json.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from glm4v_edge import checkpoint
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.files import atomic_directory
from glm4v_edge.machine import describe_machine
from glm4v_edge.manifest import record_variant
from glm4v_edge.parity import NEW_TOKENS, measure_against_reference
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.provenance import source_record, tool_versions
from glm4v_edge.quant.calibration import CalibrationSample, calibration_samples
from glm4v_edge.quant.layout import fuse_gate_up, shard_map
from glm4v_edge.quant.settings import GptqSettings
from glm4v_edge.runtime.torch_variant import TorchVariant

LOG_FILE = "quantize.log"
DTYPE_BITS = {"I32": 32, "F16": 16, "BF16": 16, "F32": 32}


def _gptqmodel_config(settings: GptqSettings):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization.config import RTNConfig

    common = {"bits": settings.bits, "group_size": settings.group_size, "sym": settings.sym}
    if settings.method == "rtn":
        return RTNConfig(**common)
    return QuantizeConfig(**common, desc_act=settings.desc_act, damp_percent=settings.damp_percent)


def _glm4v_qmodel_class():
    """GPTQModel's glm4v definition, fed our processor batches (with pixels) as calibration."""
    from gptqmodel.models.definitions.glm4v import Glm4vGPTQ

    class Glm4vMultimodalGPTQ(Glm4vGPTQ):
        def prepare_dataset(self, calibration_dataset, batch_size: int = 1, **kwargs):
            # Already the processor's output: input_ids, attention_mask, pixel_values, grids.
            # GPTQModel runs the full model on each, so layer 0 receives merged image features
            # and GLM's 3-axis rope positions.
            return calibration_dataset

    return Glm4vMultimodalGPTQ


class LayerProgress:
    """GPTQModel's layer-complete callback -> a message to the parent process."""

    def __init__(self, messages):
        self.messages = messages

    def layer_complete(self, layer_idx: int, submodule_finalized: bool):
        if not submodule_finalized:  # quantized; packing may finish later on a worker thread
            self.messages.put(("layer", layer_idx))


def _gptqmodel_worker(source: str, settings: GptqSettings, dtype, device: str, batches: list[dict],
                      staging: str, messages) -> None:
    """Runs in a child process: GPTQModel patches transformers' GLM MLP class process-wide
    (its defuser), prints banners and tables, and keeps thread pools; none of it reaches us."""
    log = os.open(Path(staging) / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # GPTQModel also writes per-module JSON logs to ./logs (quant_log.csv in the checkpoint
    # holds the same losses): work in a throwaway folder. Paths arrive absolute.
    scratch = tempfile.TemporaryDirectory(prefix="glm4v-edge-gptqmodel-")
    os.chdir(scratch.name)
    # GPTQModel sizes a loader pool of 2 workers inside a CPU pool of (cores + 1) // 2;
    # on a 2-core machine that is 1 and it refuses to start. Give it 2 unless the user chose.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))
    try:
        qmodel = _glm4v_qmodel_class().from_pretrained(source, _gptqmodel_config(settings), dtype=dtype, device=device)
        qmodel.layer_callback = LayerProgress(messages)
        qmodel.quantize(batches or None, batch_size=1)
        messages.put(("saving", None))
        qmodel.save(staging)
        messages.put(("done", None))
    except BaseException as error:
        traceback.print_exc()
        messages.put(("error", f"{type(error).__name__}: {first_line(error)}"))


def run_gptqmodel(source: str, settings: GptqSettings, dtype, device: str, batches: list[dict],
                  staging: Path, layers: int, progress: Progress) -> None:
    source = str(Path(source).resolve()) if Path(source).exists() else source  # the worker changes folder
    staging = staging.resolve()
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    worker = context.Process(target=_gptqmodel_worker, name="gptqmodel",
                             args=(source, settings, dtype, device, batches, str(staging), messages))
    worker.start()
    done = 0
    try:
        while True:
            try:
                kind, value = messages.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive():
                    raise Glm4vEdgeError(f"GPTQModel exited with code {worker.exitcode}; "
                                         f"see {staging / LOG_FILE}") from None
                continue
            if kind == "layer":
                done += 1
                progress.step(f"quantized decoder layer {done}/{layers}")
            elif kind == "saving":
                progress.step("saving the quantized checkpoint")
            elif kind == "error":
                raise Glm4vEdgeError(f"GPTQModel failed: {value}")
            elif kind == "done":
                break
    finally:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()


def quantize_gptq(
    model: str | Path | None, out: str | Path, settings: GptqSettings = GptqSettings(), *,
    calibration_data: Path | None = None, overwrite: bool = False, device: str | None = None,
    progress: Progress = SILENT,
) -> dict:
    """Quantize ``model`` (hub id, folder, None: the embedded model) into ``out``; return its manifest entry."""
    source = checkpoint.resolve_model(model)
    config = checkpoint.load_config(source)
    settings.check(config.text_config)
    out = Path(out)
    device = device or checkpoint.default_device()
    dtype = checkpoint.source_dtype(config)
    started = time.perf_counter()
    layers = config.text_config.num_hidden_layers
    progress.start(settings.variant, 4 + (settings.method == "gptq") + layers)

    # The parent holds only the processor while GPTQModel's child quantizes (layer by layer, its
    # weights read lazily from the checkpoint): never two copies of the model at once.
    progress.step("loading the processor")
    processor = checkpoint.load_processor(source)
    samples: list[CalibrationSample] = []
    if settings.method == "gptq":
        progress.step("preparing calibration prompts")
        samples = calibration_samples(calibration_data, settings.calibration,
                                      embedded=model is None, warn=progress.warn)
    batches = [sample.batch(processor) for sample in samples]

    with atomic_directory(out, overwrite) as staging:
        run_gptqmodel(source, settings, dtype, device, batches, staging, layers, progress)
        fuse_gate_up(staging)
        with checkpoint.quiet_transformers():
            processor.save_pretrained(staging)
            checkpoint.load_generation_config(source).save_pretrained(staging)

        progress.step("parity against the source")
        source_name = f"source-{str(dtype).removeprefix('torch.')}"
        parity = measure_against_reference(
            lambda: TorchVariant(source, dtype=dtype, device=device, name=source_name, bounded_memory=device == "cpu"),
            {settings.variant: lambda: TorchVariant(staging, dtype=dtype, device=device, name=settings.variant)})
        entry = {
            "kind": "gptq",
            "folder": out.name,
            "command": quantize_command(model, out, settings, calibration_data),
            "source": source_record(source, config),
            "settings": {**asdict(settings), "quantized": "language model linear layers",
                         "kept_in_source_precision": ["vision tower", "patch merger", "embeddings", "lm_head"],
                         "source_dtype": str(dtype).removeprefix("torch.")},
            "quantization_config": json.loads((staging / "config.json").read_text())["quantization_config"],
            "decoder_bits_per_weight": decoder_bits_per_weight(staging, settings.bits),
            "calibration": {
                "source": str(calibration_data or ("embedded task" if model is None else "built-in")),
                "samples": [sample.record(int(batch["input_ids"].shape[1])) for sample, batch in zip(samples, batches)],
            },
            "parity": {"reference": parity.reference, "new_tokens": NEW_TOKENS,
                       "results": parity.results[settings.variant]},
            "seconds": round(time.perf_counter() - started, 1),
            "tools": tool_versions(extra=("gptqmodel", "optimum")),
            "machine": describe_machine(),
        }
    progress.step("writing manifest.json")
    return record_variant(out, settings.variant, entry)


def quantize_command(model: str | Path | None, out: Path, settings: GptqSettings,
                     calibration_data: Path | None) -> str:
    """The command line that makes this checkpoint again (for the manifest and the model card)."""
    parts = ["glm4v-edge quantize gptq", *([f"--model {model}"] if model is not None else []),
             f"--out {out.parent.name}/{out.name}", f"--method {settings.method}", f"--bits {settings.bits}",
             f"--group-size {settings.group_size}", "--desc-act" if settings.desc_act else "--no-desc-act",
             "--sym" if settings.sym else "--asym",
             *([f"--calibration {settings.calibration}"] if settings.method == "gptq" else []),
             *([f"--calibration-data {calibration_data}"] if calibration_data else [])]
    return " ".join(parts)


def decoder_bits_per_weight(folder: Path, bits: int) -> float:
    """Stored bits per quantized decoder weight: the codes plus their scales, zeros and g_idx."""
    from safetensors import safe_open

    weight_map = shard_map(folder)
    handles = {shard: safe_open(folder / shard, "pt") for shard in set(weight_map.values())}
    stored, codes = 0, 0
    for name, shard in weight_map.items():
        kind = name.rsplit(".", 1)[-1]
        if "language_model.layers." not in name or kind not in ("qweight", "qzeros", "scales", "g_idx"):
            continue
        tensor = handles[shard].get_slice(name)
        numel = math.prod(tensor.get_shape())
        stored += numel * DTYPE_BITS[tensor.get_dtype()]
        if kind == "qweight":
            codes += numel * 32 // bits  # int32 words, each packing 32 / bits codes
    return round(stored / codes, 3) if codes else float("nan")
