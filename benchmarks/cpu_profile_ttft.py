"""Time to first token of a one-image question per image size: the measurement behind the CPU
profile's image limit (glm4v_edge/runtime/cpu_profile.py).

    python benchmarks/cpu_profile_ttft.py OUT.json --artifacts FOLDER --variant onnx-q4 \
        --sizes 448,560,672,784 --threads 2

One process, the variant loaded once; one warm-up question at the smallest size, then each size
``--runs`` times (median). The processor's own limit is lifted so each size is what it says;
image tokens = patches / merge^2 are recorded beside the times. ``--video-frames N`` adds a
video question (N frames of ``--video-size WxH`` at 2 fps) with the CPU profile applied, as
chat and the demo would size it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--variant", default="onnx-q4")
    parser.add_argument("--sizes", default="448,560,672,784")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--video-frames", type=int, default=0)
    parser.add_argument("--video-size", default="640x360")
    args = parser.parse_args()

    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine, peak_rss_mib
    from glm4v_edge.media import Video
    from glm4v_edge.messages import user_message
    from glm4v_edge.runtime.cpu_profile import apply_max_pixels, max_pixels_for, remove_max_pixels
    from glm4v_edge.runtime.inputs import build_batch
    from glm4v_edge.runtime.registry import load_from
    from glm4v_edge.runtime.variant import Sampling

    started = time.perf_counter()
    variant = load_from(args.variant, None, args.artifacts, device="cpu", threads=args.threads, cpu_profile=False)
    load_s = round(time.perf_counter() - started, 1)
    remove_max_pixels(variant.processor)
    merged = variant.processor.image_processor.merge_size ** 2

    def first_token_s(question: dict) -> float:
        messages = [question]
        start = time.perf_counter()
        next(iter(variant.generate(messages, max_new_tokens=1, sampling=Sampling.greedy())), None)
        return time.perf_counter() - start

    sizes = [int(s) for s in args.sizes.split(",")]
    first_token_s(user_message("Describe the image in detail.", images=[image_of(sizes[0])]))  # warm-up
    results = {}
    for size in sizes:
        question = user_message("Describe the image in detail.", images=[image_of(size)])
        batch = build_batch(variant.processor, [[question]])
        times = [first_token_s(question) for _ in range(args.runs)]
        results[f"{size}px"] = {"pixels": size * size, "image_tokens": int(batch["image_grid_thw"].prod()) // merged,
                                "prompt_tokens": int(batch["input_ids"].shape[1]),
                                "ttft_s": round(statistics.median(times), 2), "runs": [round(t, 2) for t in times]}
        print(size, results[f"{size}px"], flush=True)
    if args.video_frames:
        apply_max_pixels(variant.processor, max_pixels_for("cpu"))
        width, height = (int(side) for side in args.video_size.split("x"))
        frames = np.stack([np.roll(np.asarray(image_of(max(width, height)).resize((width, height))), 9 * i, axis=1)
                           for i in range(args.video_frames)])
        question = user_message("What happens in the video?", video=Video.from_frames(frames, fps=2.0))
        batch = build_batch(variant.processor, [[question]])
        times = [first_token_s(question) for _ in range(args.runs)]
        results["video"] = {"frames": args.video_frames, "frame_size": args.video_size,
                            "resized_to": [int(side) * 14 for side in batch["video_grid_thw"][0][1:]],
                            "video_tokens": int(batch["video_grid_thw"].prod(-1).sum()) // merged,
                            "prompt_tokens": int(batch["input_ids"].shape[1]), "cpu_profile": max_pixels_for("cpu"),
                            "ttft_s": round(statistics.median(times), 2), "runs": [round(t, 2) for t in times]}
        print("video", results["video"], flush=True)
    record = {"what": "time to first token of a one-image question, by image size (and of a video question)",
              "variant": args.variant,
              "artifacts": str(args.artifacts), "threads": args.threads, "load_s": load_s,
              "peak_rss_mib": peak_rss_mib(), "machine": describe_machine(), "date": time.strftime("%Y-%m-%d"),
              "results": results}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
