"""``glm4v-edge export onnx``: a checkpoint -> a self-contained, verified artifacts folder.

Steps: check the source (every shard readable, enough free disk), write the graphs in every asked
precision by the bounded-memory path (``streaming.py``: one tensor at a time, never the whole
model), copy the processor/config files beside them, measure parity of every precision against
the torch source (reference first, then one ONNX session at a time), write manifest.json and the
model card. All of it happens in a staging folder that is renamed into place at the end, so an
interrupted export never leaves a folder that looks complete.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from glm4v_edge import checkpoint
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.precisions import EIGHT_BIT_BLOCK
from glm4v_edge.export.settings import ExportSettings, Q4Settings
from glm4v_edge.export.streaming import export_graphs
from glm4v_edge.files import atomic_directory
from glm4v_edge.machine import available_memory_bytes, describe_machine, peak_rss_mib
from glm4v_edge.manifest import read_manifest, write_manifest
from glm4v_edge.names import MASKED_ROOM_KV_CACHE
from glm4v_edge.parity import NEW_TOKENS, measure_against_reference
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.provenance import source_record, tool_versions
from glm4v_edge.weights import CheckpointReader

TOOLS = ("onnx", "onnxruntime", "onnxscript", "onnx-ir")
# Output bytes per parameter, for the free-disk check before anything is written (q4 carries
# its block scales; int8 its per-channel scales; fp32 is written only when asked).
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "q4": 0.6, "q4f16": 0.6, "int8": 1.05}
DISK_MARGIN = 1.1
# Older exporters trace wrong decoders (measured on the embedded model): torch 2.8 fixes the decoder's
# position_ids to the example's shape; torch 2.11's decoder agrees teacher-forced but its greedy
# replies leave the source's after 4 tokens (the fp32 parity check refuses it). 2.14 is exact; 2.12
# and 2.13 were not tried. The exported graphs themselves run with any torch.
EXPORT_TORCH = "2.14"
# What a torch process needs beside the weights for parity on the short fixed prompts
# (interpreter, libraries, activations), measured on the medium shape: ~1 GiB.
PARITY_OVERHEAD_BYTES = 1.5 * 2**30


def save_processor_files(source: str, folder: Path) -> None:
    """Config (as published), generation config, tokenizer, chat template and preprocessor configs."""
    with checkpoint.quiet_transformers():
        checkpoint.load_config(source).save_pretrained(folder)
        checkpoint.load_generation_config(source).save_pretrained(folder)
        checkpoint.load_processor(source).save_pretrained(folder)


def check_torch_version() -> None:
    if torch.__version__ < EXPORT_TORCH:
        raise Glm4vEdgeError(f"ONNX export needs torch >= {EXPORT_TORCH} (torch {torch.__version__}'s exporter "
                             "traces a wrong decoder); exported graphs, chat, the demo and GPTQ run with it")


def check_free_disk(out: Path, parameters: int, dtypes: tuple[str, ...]) -> None:
    # A converted precision passes through the streaming export's scratch file before it is written
    # (one precision at a time): the largest one counts twice.
    scratch = max((BYTES_PER_PARAMETER[dtype] for dtype in dtypes if dtype != "fp32"), default=0.0)
    needed = DISK_MARGIN * parameters * (sum(BYTES_PER_PARAMETER[dtype] for dtype in dtypes) + scratch)
    parent = next(p for p in (out.resolve(), *out.resolve().parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise Glm4vEdgeError(f"{parent} has {free / 1e9:.1f} GB free; the {', '.join(dtypes)} export of "
                             f"{parameters / 1e9:.2f} B parameters needs about {needed / 1e9:.1f} GB")


def parity_dtype(source_dtype: torch.dtype, parameters: int) -> tuple[torch.dtype | None, str]:
    """The precision to load the torch reference in: fp32 when it fits in the memory available
    now, else the checkpoint's own (bf16 for GLM-4.1V), else none — with the reason."""
    available = available_memory_bytes()
    for dtype in dict.fromkeys((torch.float32, source_dtype)):
        needed = parameters * dtype.itemsize + PARITY_OVERHEAD_BYTES
        if available is None or needed <= available:
            return dtype, ""
    return None, (f"the torch source needs about {needed / 2**30:.1f} GiB in {source_dtype} and "
                  f"{available / 2**30:.1f} GiB are available")


def export_command(model: str | None, out: Path, settings: ExportSettings) -> str:
    """The command line that makes this folder again (for the manifest and the model card)."""
    parts = ["glm4v-edge export onnx", *([f"--model {model}"] if model else []), f"--out {out.name}",
             f"--dtypes {','.join(settings.dtypes)}", f"--block-size {settings.q4.block_size}",
             f"--accuracy-level {settings.q4.accuracy_level}", f"--q4-method {settings.q4.method}",
             *([f"--gptq {settings.q4.gptq}"] if settings.q4.gptq else []), f"--vocab-bits {settings.q4.vocab_bits}",
             f"--vision-bits {settings.q4.vision_bits}", f"--vision-kernel {settings.q4.vision_kernel}",
             "--parity" if settings.parity else "--no-parity"]
    return " ".join(parts)


def weights_record(settings: ExportSettings) -> dict[str, str]:
    """Where each precision's weights came from, for the manifest and the model card."""
    q4 = settings.q4
    described = {"fp32": "the source checkpoint's", "fp16": "the source checkpoint's, cast to fp16",
                 "int8": "dynamic int8 (per channel) of the source checkpoint's",
                 "q4": f"int4: {int4_parts(q4, q4.vision_kernel)}",
                 # fp16 graphs keep MatMulNBits: onnxruntime's dynamic int8 quantizes fp32 activations only
                 "q4f16": f"int4: {int4_parts(q4, 'matmulnbits')}; fp16 activations"}
    return {dtype: described[dtype] for dtype in settings.dtypes}


def int4_parts(q4: Q4Settings, vision_kernel: str) -> str:
    """The int4 precisions' weights, part by part."""
    rounded = f"round-to-nearest, blocks of {q4.block_size}"
    vision = (f"the vision encoder {rounded}" if q4.vision_bits == 4 else
              "the vision encoder int8 (onnxruntime's dynamic quantization, per channel: MatMulInteger)"
              if vision_kernel == "matmulinteger" else
              f"the vision encoder {q4.vision_bits}-bit round-to-nearest, blocks of {EIGHT_BIT_BLOCK}")
    parts = {"rtn": [rounded], "hqq": [f"HQQ (onnxruntime's, data-free), blocks of {q4.block_size}"],
             "gptq": [f"the decoder's linears from the GPTQ checkpoint {Path(q4.gptq or '').name} (its groups)"]
             }[q4.method]
    if q4.vision_bits != 4 or q4.method == "gptq":
        parts.append(vision)
    # The vocabulary: HQQ has no Gather, and GPTQ checkpoints keep the embeddings and lm_head unquantized.
    if q4.vocab_bits != 4:
        parts.append(f"the embeddings and lm_head {q4.vocab_bits}-bit round-to-nearest, blocks of {EIGHT_BIT_BLOCK}")
    elif q4.method != "rtn":
        parts.append(f"the embeddings{' and lm_head' if q4.method == 'gptq' else ''} {rounded}")
    return "; ".join(parts)


def export_onnx(
    model: str | Path | None, out: str | Path, settings: ExportSettings = ExportSettings(), *,
    overwrite: bool = False, keep_variants: tuple[str, ...] = (), progress: Progress = SILENT,
) -> dict:
    """Export ``model`` (hub id, folder or None for the embedded model) to ``out``; return the manifest.
    ``keep_variants``: quantized checkpoints ``out`` already holds (``glm4v-edge build`` makes
    GPTQ's first, for the q4 graphs to carry its weights); they move into the new folder at the end."""
    started = time.perf_counter()
    check_torch_version()
    settings.q4.check()
    source = checkpoint.resolve_model(model)
    config = checkpoint.load_config(source)
    reader = CheckpointReader(checkpoint.local_checkpoint(source))  # every shard checked before any work
    parameters = sum(math.prod(shape) for shape in reader.shapes.values())
    out = Path(out)
    check_free_disk(out, parameters, settings.dtypes)
    kept = {name: read_manifest(out)["variants"][name] for name in keep_variants}
    with atomic_directory(out, overwrite or bool(kept)) as staging:
        save_processor_files(source, staging)
        export_graphs(reader, staging, settings.dtypes, settings.q4, progress=progress)
        layout = {"dtypes": list(settings.dtypes), "kv_cache": MASKED_ROOM_KV_CACHE}
        write_manifest(staging, layout)  # provisional: lets the ONNX variant load
        record = measure_parity(source, staging, settings, parameters, progress) if settings.parity else {
            "measured": False, "reason": "--no-parity"}
        for entry in kept.values():
            os.replace(out / entry["folder"], staging / entry["folder"])
        manifest = write_manifest(staging, {
            "source": source_record(source, config),
            **layout,
            **({"variants": kept} if kept else {}),
            "q4": asdict(settings.q4),
            "weights": weights_record(settings),
            "parity": record,
            "export": {"command": export_command(None if model is None else str(model), out, settings),
                       "parameters": parameters, "seconds": round(time.perf_counter() - started, 1),
                       "peak_rss_mib": peak_rss_mib()},
            "tools": tool_versions(TOOLS),
            "machine": describe_machine(),
        })
    return manifest


def measure_parity(source: str, folder: Path, settings: ExportSettings, parameters: int,
                   progress: Progress) -> dict:
    """Parity of every exported precision against the torch source, never both in memory: the
    source's greedy replies and logits first, then one ONNX session at a time. When the fp32
    graphs are exported, they must reproduce the source's greedy replies exactly."""
    from glm4v_edge.runtime.onnx_variant import OnnxVariant
    from glm4v_edge.runtime.torch_variant import TorchVariant

    torch_dtype, reason = parity_dtype(checkpoint.source_dtype(checkpoint.load_config(source)), parameters)
    if torch_dtype is None:
        return {"measured": False, "reason": reason}
    progress.start("parity", 1 + len(settings.dtypes))
    progress.step(f"greedy reference replies from the torch source ({torch_dtype})")
    report = measure_against_reference(
        lambda: TorchVariant(source, dtype=torch_dtype, device="cpu", bounded_memory=True),
        {dtype: lambda dtype=dtype: OnnxVariant(folder, dtype=dtype, device="cpu") for dtype in settings.dtypes},
        on_candidate=lambda dtype: progress.step(f"parity of {dtype}"))
    check_parity(report.results, exact_fp32=torch_dtype == torch.float32)
    return {"measured": True, "reference": report.reference, "new_tokens": NEW_TOKENS, "results": report.results}


def check_parity(results: dict[str, dict[str, dict]], exact_fp32: bool) -> None:
    """Refuse graphs that are broken rather than lossy: any precision whose logits are not finite
    (NaN or inf: the graph or the onnxruntime running it is wrong), and fp32 graphs that do not
    reproduce an fp32 source's greedy replies."""
    import onnxruntime

    for dtype, prompts in results.items():
        broken = [name for name, result in prompts.items() if not math.isfinite(result["mean_kl"])]
        if broken:
            raise Glm4vEdgeError(f"the {dtype} ONNX graphs give non-finite logits (NaN or inf) on: "
                                 f"{', '.join(broken)} (onnxruntime {onnxruntime.__version__}); nothing was written")
    failed = [name for name, result in results.get("fp32", {}).items() if not result["exact"]]
    if exact_fp32 and failed:
        raise Glm4vEdgeError(f"the fp32 ONNX export does not reproduce the source's greedy output on: "
                             f"{', '.join(failed)}; nothing was written")
