"""``glm4v-edge build``: the whole pipeline on one checkpoint — ONNX export (every precision),
GPTQ int4, and the benchmark of all of them — into one artifacts folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glm4v_edge.bench.settings import BenchSettings
from glm4v_edge.export.settings import ExportSettings
from glm4v_edge.files import check_output_folder
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.quant.settings import GptqSettings

ARTIFACTS_ROOT = Path("artifacts")  # git-ignored: a build never touches committed files


@dataclass(frozen=True)
class BuildSettings:
    export: ExportSettings = field(default_factory=ExportSettings)
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
    from glm4v_edge.export.onnx_export import export_onnx
    from glm4v_edge.quant.gptq import quantize_gptq

    check_output_folder(out, overwrite)
    export_onnx(model, out, settings.export, overwrite=overwrite, progress=progress)
    quantize_gptq(model, out / settings.gptq.variant, settings.gptq, device=device, progress=progress)
    bench = BenchSettings(artifacts=out, model=model, prompts=settings.prompts, runs=settings.runs, device=device,
                          threads=threads)
    return run_bench(bench, progress)
