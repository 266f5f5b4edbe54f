"""``glm4v-edge export onnx``: a checkpoint -> a self-contained, verified artifacts folder.

Steps: export the three fp32 graphs, convert them to each asked precision, copy the
processor/config files beside them, measure parity of every precision against the torch fp32
source, write manifest.json. All of it happens in a staging folder that is renamed into
place at the end, so an interrupted export never leaves a folder that looks complete.
"""

from __future__ import annotations

from pathlib import Path

import torch

from glm4v_edge import checkpoint
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export import graphs
from glm4v_edge.export.precisions import convert
from glm4v_edge.export.settings import ExportSettings
from glm4v_edge.files import atomic_directory
from glm4v_edge.machine import describe_machine
from glm4v_edge.manifest import write_manifest
from glm4v_edge.names import GRAPHS, external_data_files, graph_file
from glm4v_edge.parity import NEW_TOKENS, measure_parity, parity_prompts, reference_run
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.provenance import source_record, tool_versions
from glm4v_edge.runtime.onnx_variant import OnnxVariant
from glm4v_edge.runtime.torch_variant import TorchVariant

EXPORTERS = {
    "vision_encoder": graphs.export_vision_encoder,
    "embed_tokens": graphs.export_embed_tokens,
    "decoder_model_merged": graphs.export_decoder,
}
TOOLS = ("onnx", "onnxruntime", "onnxscript")


def save_processor_files(source: TorchVariant, folder: Path) -> None:
    """Config, generation config, tokenizer, chat template and preprocessor configs."""
    with checkpoint.quiet_transformers():
        checkpoint.load_config(source.source).save_pretrained(folder)  # as published, not as loaded (fp32)
        source.generation_config.save_pretrained(folder)
        source.processor.save_pretrained(folder)


def export_onnx(
    model: str | Path | None, out: str | Path, settings: ExportSettings = ExportSettings(), *,
    overwrite: bool = False, progress: Progress = SILENT,
) -> dict:
    """Export ``model`` (hub id, folder or None for the embedded model) to ``out``; return the manifest."""
    dtypes, q4 = list(settings.dtypes), settings.q4
    conversions = len([d for d in dtypes if d != "fp32"])
    progress.start("export", 1 + len(GRAPHS) * (1 + conversions) + 1 + (1 + conversions) + 1)
    source = checkpoint.resolve_model(model)
    out = Path(out)
    with atomic_directory(out, overwrite) as staging:
        progress.step("loading the source checkpoint (fp32)")
        reference = TorchVariant(source, dtype=torch.float32, device="cpu", name="torch-fp32")
        (staging / "onnx").mkdir()
        save_processor_files(reference, staging)
        for graph in GRAPHS:
            progress.step(f"exporting {graph} (fp32)")
            with torch.no_grad():
                EXPORTERS[graph](reference.model, staging / graph_file(graph, "fp32"))
        for dtype in dtypes:
            if dtype == "fp32":
                continue
            for graph in GRAPHS:
                progress.step(f"converting {graph} to {dtype}")
                convert(staging / graph_file(graph, "fp32"), dtype, staging / graph_file(graph, dtype), q4)

        checked = ["fp32", *[d for d in dtypes if d != "fp32"]]
        write_manifest(staging, {"dtypes": checked})  # provisional: lets the ONNX variant load
        progress.step("greedy reference replies from the torch source")
        runs = {name: reference_run(reference, messages) for name, messages in parity_prompts().items()}
        parity = {}
        for dtype in checked:
            progress.step(f"parity of {dtype}")
            parity[dtype] = measure_parity(runs, OnnxVariant(staging, dtype=dtype, device="cpu"))
            if dtype == "fp32":
                failed = [name for name, result in parity[dtype].items() if not result["exact"]]
                if failed:
                    raise Glm4vEdgeError(
                        f"the fp32 ONNX export does not reproduce the source's greedy output on: {', '.join(failed)}; "
                        "nothing was written"
                    )
        if "fp32" not in dtypes:
            for graph in GRAPHS:
                fp32 = staging / graph_file(graph, "fp32")
                fp32.unlink()
                for side_file in external_data_files(fp32.name):
                    fp32.with_name(side_file).unlink(missing_ok=True)
            del parity["fp32"]
        progress.step("writing manifest.json")
        manifest = write_manifest(staging, {
            "source": source_record(source, reference.model.config),
            "dtypes": dtypes,
            "q4": {"block_size": q4.block_size, "accuracy_level": q4.accuracy_level, "symmetric": q4.symmetric},
            "parity": {"reference": "torch-fp32", "new_tokens": NEW_TOKENS, "results": parity},
            "tools": tool_versions(TOOLS),
            "machine": describe_machine(),
        })
    return manifest
