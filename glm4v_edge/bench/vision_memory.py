"""Peak memory and time of the ONNX vision encoder alone, per image size and for a video
(``glm4v-edge bench vision-memory``), each case in a fresh process: VmHWM is a process's
high-water mark, so cases must not share one.

Each case loads the processor and the vision graph only (no decoder), runs the encoder once on
a generated image (or video), and records: patches, peak RSS after loading, peak RSS after the
run, and the run's wall time. The processor's own size limit is lifted so every size is what it
says.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.progress import SILENT, Progress

KIND = "vision-memory"
QUESTION = "Describe."


@dataclass(frozen=True)
class VisionMemorySettings:
    artifacts: dict[str, Path]  # label -> an `export onnx` folder (or hub repo)
    dtype: str = "q4"
    sizes: tuple[int, ...] = (448, 896, 1344)  # square image sides, px
    video_frames: int = 4  # 0: no video case
    video_size: int = 448  # square frame side, px
    threads: int | None = None  # None: every core this process may use
    out: Path | None = None
    name: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    size: int
    frames: int  # 0: an image


def cases(settings: VisionMemorySettings) -> list[Case]:
    image_cases = [Case(f"{size}px", size, 0) for size in settings.sizes]
    if not settings.video_frames:
        return image_cases
    return [*image_cases, Case(f"video {settings.video_frames}x{settings.video_size}px", settings.video_size,
                               settings.video_frames)]


def case_batch(processor, case: Case) -> tuple[dict, np.ndarray]:
    """The processor's batch for the case's image or video, and its media grids."""
    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.media import Video
    from glm4v_edge.messages import user_message
    from glm4v_edge.runtime.inputs import build_batch

    if case.frames:
        clip = np.stack([np.roll(np.asarray(image_of(case.size)), 7 * i, axis=1) for i in range(case.frames)])
        batch = build_batch(processor, [[user_message(QUESTION, video=Video.from_frames(clip, fps=2.0))]])
        return batch, batch["video_grid_thw"]
    batch = build_batch(processor, [[user_message(QUESTION, images=[image_of(case.size)])]])
    return batch, batch["image_grid_thw"]


def run_case(folder: str, dtype: str, case: Case, threads: int) -> dict:
    """One case, in a process of its own (``measure_vision_memory`` spawns it)."""
    from glm4v_edge.checkpoint import load_config, load_processor
    from glm4v_edge.dims import merge_size
    from glm4v_edge.machine import peak_rss_mib
    from glm4v_edge.names import graph_file
    from glm4v_edge.runtime.cpu_profile import remove_max_pixels
    from glm4v_edge.runtime.onnx_variant import Graph, encode_media

    processor = load_processor(folder)
    remove_max_pixels(processor)
    batch, grids = case_batch(processor, case)
    graph = Graph(Path(folder) / graph_file("vision_encoder", dtype), "cpu", threads)
    loaded = peak_rss_mib()
    start = time.perf_counter()
    features = encode_media(graph, merge_size(load_config(folder)), {k: np.asarray(v) for k, v in batch.items()})
    seconds = round(time.perf_counter() - start, 2)
    return {"patches": int(grids.prod(-1).sum()), "calls": int(grids[:, 0].sum()), "grid_thw": grids.tolist(),
            "features": len(features), "seconds": seconds,
            "peak_rss_after_load_mib": loaded, "peak_rss_mib": peak_rss_mib()}


def measure_vision_memory(settings: VisionMemorySettings, progress: Progress = SILENT) -> dict:
    from glm4v_edge.bench.bandwidth import default_threads
    from glm4v_edge.bench.onnx_build import onnx_folder

    settings = replace(settings, threads=settings.threads or default_threads())
    folders = {label: onnx_folder(artifacts, settings.dtype) for label, artifacts in settings.artifacts.items()}
    progress.start(KIND, len(folders) * len(cases(settings)))
    results = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its VmHWM is this case's alone
    for label, folder in folders.items():
        for case in cases(settings):
            progress.step(f"{label}: {case.name}")
            with context.Pool(1) as pool:
                result = pool.apply(run_case, (str(folder), settings.dtype, case, settings.threads))
            results.setdefault(label, {})[case.name] = {"folder": str(settings.artifacts[label]), **result}
    name = record_name(settings.name, KIND, *settings.artifacts.values())
    record = new_record(KIND, name, "ONNX vision encoder alone, one fresh process per case", plain(settings))
    return {**record, "results": results}


def markdown(record: dict) -> str:
    rows = [[label, case, result["patches"], result["seconds"], result["peak_rss_after_load_mib"],
             result["peak_rss_mib"]]
            for label, by_case in record["results"].items() for case, result in by_case.items()]
    settings = record["settings"]
    lines = heading(record) + table(["build", "case", "patches", "encode s", "peak RSS after load MiB",
                                     "peak RSS MiB"], rows)
    lines += ["", f"onnx-{settings['dtype']} vision encoder, {settings['threads']} threads; peak RSS is the "
              "case's own process's (VmHWM)."]
    return "\n".join(lines) + "\n"
