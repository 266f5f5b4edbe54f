"""Time to first token of a one-image question per image size (``glm4v-edge bench ttft``): the
measurement behind the CPU profile's image limit (``runtime/cpu_profile.py``).

One process, the variant loaded once; one warm-up question at the smallest size, then each size
``runs`` times (median). The processor's own limit is lifted so each size is what it says; image
tokens = patches / merge^2 are recorded beside the times. ``video_frames`` adds a video question
(that many frames of ``video_size`` at 2 fps) with the CPU profile applied, as chat and the demo
would size it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.progress import SILENT, Progress

KIND = "ttft"
IMAGE_QUESTION = "Describe the image in detail."
VIDEO_QUESTION = "What happens in the video?"
VIDEO_FPS = 2.0


@dataclass(frozen=True)
class TtftSettings:
    artifacts: Path | None = None
    model: str | None = None
    variant: str = "onnx-q4"
    sizes: tuple[int, ...] = (448, 560, 672, 784)  # square image sides, px
    runs: int = 1
    threads: int | None = None  # None: every core this process may use
    video_frames: int = 0  # 0: no video question
    video_size: tuple[int, int] = (640, 360)  # width, height of each frame
    out: Path | None = None
    name: str | None = None


def first_token_s(variant, question: dict) -> float:
    from glm4v_edge.runtime.variant import Sampling

    start = time.perf_counter()
    next(iter(variant.generate([question], max_new_tokens=1, sampling=Sampling.greedy())), None)
    return time.perf_counter() - start


def timed_question(variant, question: dict, runs: int) -> tuple[dict, dict]:
    """The question's processor batch, and its time to first token over ``runs``."""
    from glm4v_edge.runtime.inputs import build_batch

    batch = build_batch(variant.processor, [[question]])
    times = [first_token_s(variant, question) for _ in range(runs)]
    return batch, {"ttft_s": round(statistics.median(times), 3), "runs": [round(t, 3) for t in times]}


def image_question(size: int) -> dict:
    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.messages import user_message

    return user_message(IMAGE_QUESTION, images=[image_of(size)])


def video_question(frames: int, width: int, height: int) -> dict:
    """A clip of a random image sliding sideways, ``frames`` frames of ``width`` x ``height``."""
    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.media import Video
    from glm4v_edge.messages import user_message

    still = np.asarray(image_of(max(width, height)).resize((width, height)))
    clip = np.stack([np.roll(still, 9 * i, axis=1) for i in range(frames)])
    return user_message(VIDEO_QUESTION, video=Video.from_frames(clip, fps=VIDEO_FPS))


def image_result(variant, size: int, runs: int) -> dict:
    batch, timing = timed_question(variant, image_question(size), runs)
    merged = variant.processor.image_processor.merge_size ** 2
    return {"pixels": size * size, "image_tokens": int(batch["image_grid_thw"].prod()) // merged,
            "prompt_tokens": int(batch["input_ids"].shape[1]), **timing}


def video_result(variant, settings: TtftSettings) -> dict:
    """The video question with the CPU profile's limit applied, as chat and the demo size it."""
    from glm4v_edge.runtime.cpu_profile import apply_max_pixels, max_pixels_for

    apply_max_pixels(variant.processor, max_pixels_for("cpu"))
    width, height = settings.video_size
    batch, timing = timed_question(variant, video_question(settings.video_frames, width, height), settings.runs)
    grid = batch["video_grid_thw"]
    patch = variant.processor.video_processor.patch_size
    return {"frames": settings.video_frames, "frame_size": f"{width}x{height}",
            "resized_to": [int(side) * patch for side in grid[0][1:]],
            "video_tokens": int(grid.prod(-1).sum()) // variant.processor.video_processor.merge_size ** 2,
            "prompt_tokens": int(batch["input_ids"].shape[1]), "cpu_profile": max_pixels_for("cpu"), **timing}


def measure_ttft(settings: TtftSettings, progress: Progress = SILENT) -> dict:
    from glm4v_edge.bench.bandwidth import default_threads
    from glm4v_edge.hub import pinned
    from glm4v_edge.machine import peak_rss_mib
    from glm4v_edge.runtime.cpu_profile import remove_max_pixels
    from glm4v_edge.runtime.registry import check_built, check_known, load_from

    settings = replace(settings, threads=settings.threads or default_threads())
    check_known([settings.variant])
    if settings.artifacts is not None:
        check_built([settings.variant], settings.artifacts)
    progress.start(KIND, 2 + len(settings.sizes) + bool(settings.video_frames))
    progress.step(f"loading {settings.variant}")
    started = time.perf_counter()
    variant = load_from(settings.variant, settings.model, settings.artifacts, device="cpu", threads=settings.threads,
                        cpu_profile=False)
    load_s = round(time.perf_counter() - started, 2)
    remove_max_pixels(variant.processor)
    progress.step(f"warm-up at {settings.sizes[0]} px")
    first_token_s(variant, image_question(settings.sizes[0]))
    results = {}
    for size in settings.sizes:
        progress.step(f"{size} px, {settings.runs} run(s)")
        results[f"{size}px"] = image_result(variant, size, settings.runs)
    if settings.video_frames:
        progress.step(f"a video of {settings.video_frames} frames")
        results["video"] = video_result(variant, settings)
    recorded = {**plain(settings), "artifacts": pinned(settings.artifacts) if settings.artifacts else None}
    record = new_record(KIND, record_name(settings.name, KIND, settings.artifacts),
                        "time to first token of a one-image question, by image size (and of a video question)",
                        recorded)
    return {**record, "load_s": load_s, "peak_rss_mib": peak_rss_mib(), "results": results}


def markdown(record: dict) -> str:
    rows = [[case, result.get("image_tokens", result.get("video_tokens")), result["prompt_tokens"],
             f"{result['ttft_s']:.2f}", ", ".join(f"{t:.2f}" for t in result["runs"])]
            for case, result in record["results"].items()]
    settings = record["settings"]
    lines = heading(record) + table(["question", "image or video tokens", "prompt tokens", "TTFT s (median)",
                                     "runs s"], rows)
    lines += ["", f"{settings['variant']} on CPU, {settings['threads']} threads; loaded in {record['load_s']} s, "
              f"peak RSS {record['peak_rss_mib']} MiB."]
    if "video" in record["results"]:
        video = record["results"]["video"]
        lines += ["", f"Video: {video['frames']} frames of {video['frame_size']}, resized by the CPU profile to "
                  f"{video['resized_to'][1]}x{video['resized_to'][0]}."]
    return "\n".join(lines) + "\n"
