"""``glm4v-edge build``: the whole pipeline on one checkpoint — ONNX export (every precision),
GPTQ int4, and the benchmark of all of them — into one artifacts folder."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from glm4v_edge.bench.settings import BenchSettings
from glm4v_edge.export.settings import ExportSettings, Q4Settings
from glm4v_edge.files import check_output_folder
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.quant.settings import GptqSettings

ARTIFACTS_ROOT = Path("artifacts")  # git-ignored: a build never touches committed files


# The build's int4: GPTQ's calibrated weights in the q4 graphs, the vocabulary matrices and the vision
# encoder (what GPTQModel leaves unquantized) at 8 bits: the most faithful int4 measured, at
# round-to-nearest's speed (benchmarks/results/q4-tradeoff-tiny-*, 9b-q4-block-sizes-*).
BUILD_Q4 = Q4Settings(method="gptq", vocab_bits=8, vision_bits=8, block_size=128)


@dataclass(frozen=True)
class BuildSettings:
    export: ExportSettings = field(default_factory=lambda: ExportSettings(q4=BUILD_Q4))
    gptq: GptqSettings = field(default_factory=GptqSettings)
    prompts: str = "quick"  # the benchmark's prompt set
    runs: int = 3


def default_artifacts(model: str | None) -> Path:
    """artifacts/tiny for the embedded model, else artifacts/<checkpoint name>."""
    return ARTIFACTS_ROOT / ("tiny" if model is None else Path(str(model)).name.lower())


def build(model: str | None, out: Path, settings: BuildSettings = BuildSettings(), *, device: str | None = None,
          threads: int | None = None, overwrite: bool = False, progress: Progress = SILENT) -> tuple[dict, list[Path]]:
    """Export, quantize and benchmark ``model`` into ``out``; return the benchmark record and its files
    (written under ``out/bench``)."""
    from glm4v_edge.bench.benchmark import run_bench
    from glm4v_edge.checkpoint import kept_root_logger
    from glm4v_edge.export.onnx_export import export_onnx
    from glm4v_edge.quant.gptq import quantize_gptq

    check_output_folder(out, overwrite)
    gptq = out / settings.gptq.variant  # made first; the export then replaces the rest of ``out`` at once
    with kept_root_logger():
        quantize_gptq(model, gptq, settings.gptq, overwrite=overwrite, device=device, progress=progress)
    export = settings.export
    if export.q4.method == "gptq" and export.q4.gptq is None:  # the q4 graphs carry this build's GPTQ weights
        export = replace(export, q4=replace(export.q4, gptq=str(gptq)))
    export_onnx(model, out, export, keep_variants=(settings.gptq.variant,), progress=progress)
    bench = BenchSettings(artifacts=out, model=model, prompts=settings.prompts, runs=settings.runs, device=device,
                          threads=threads)
    return run_bench(bench, progress)
