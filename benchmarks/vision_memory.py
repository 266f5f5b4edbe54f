"""Peak memory and time of the ONNX vision encoder alone, per image size and for a video, each
case in a fresh process (VmHWM is a process's high-water mark, so cases must not share one).

    python benchmarks/vision_memory.py OUT.json --artifacts before=FOLDER_A after=FOLDER_B \
        --dtype q4 --sizes 448,896,1344 --video-frames 4 --video-size 448

Each case loads the processor and the vision graph only (no decoder), runs the encoder once on a
generated image (or video), and records: patches, peak RSS after loading, peak RSS after the run,
and the run's wall time. The processor's own size limit is lifted so every size is what it says.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_case(folder: str, dtype: str, size: int, frames: int, threads: int) -> dict:
    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.checkpoint import load_config, load_processor
    from glm4v_edge.dims import merge_size
    from glm4v_edge.machine import peak_rss_mib
    from glm4v_edge.media import Video
    from glm4v_edge.messages import user_message
    from glm4v_edge.names import graph_file
    from glm4v_edge.runtime.cpu_profile import remove_max_pixels
    from glm4v_edge.runtime.inputs import build_batch
    from glm4v_edge.runtime.onnx_variant import Graph, encode_media

    processor = load_processor(folder)
    remove_max_pixels(processor)
    if frames:
        frames_array = np.stack([np.roll(np.asarray(image_of(size)), 7 * i, axis=1) for i in range(frames)])
        video = Video.from_frames(frames_array, fps=2.0)
        batch = build_batch(processor, [[user_message("Describe.", video=video)]])
        grids = batch["video_grid_thw"]
    else:
        batch = build_batch(processor, [[user_message("Describe.", images=[image_of(size)])]])
        grids = batch["image_grid_thw"]
    graph = Graph(Path(folder) / graph_file("vision_encoder", dtype), "cpu", threads)
    loaded = peak_rss_mib()
    start = time.perf_counter()
    features = encode_media(graph, merge_size(load_config(folder)), {k: np.asarray(v) for k, v in batch.items()})
    seconds = round(time.perf_counter() - start, 2)
    return {"patches": int(grids.prod(-1).sum()), "calls": int(grids[:, 0].sum()), "grid_thw": grids.tolist(),
            "features": len(features), "seconds": seconds,
            "peak_rss_after_load_mib": loaded, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--artifacts", nargs="+", required=True, help="LABEL=FOLDER (an `export onnx` folder)")
    parser.add_argument("--dtype", default="q4")
    parser.add_argument("--sizes", default="448,896,1344")
    parser.add_argument("--video-frames", type=int, default=4)
    parser.add_argument("--video-size", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine

    cases = [(f"{size}px", size, 0) for size in map(int, args.sizes.split(","))]
    if args.video_frames:
        cases.append((f"video {args.video_frames}x{args.video_size}px", args.video_size, args.video_frames))
    results = {}
    context = multiprocessing.get_context("spawn")
    for entry in args.artifacts:
        label, folder = entry.split("=", 1)
        for name, size, frames in cases:
            with context.Pool(1) as pool:
                result = pool.apply(run_case, (folder, args.dtype, size, frames, args.threads))
            results.setdefault(label, {})[name] = {"folder": folder, **result}
            print(label, name, result, flush=True)
    record = {"what": "ONNX vision encoder alone, one fresh process per case", "dtype": args.dtype,
              "threads": args.threads, "machine": describe_machine(), "date": time.strftime("%Y-%m-%d"),
              "results": results}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
