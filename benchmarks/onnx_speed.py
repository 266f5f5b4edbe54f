"""CPU speed of the ONNX variants against torch fp32, side by side in one run.

On the `medium` random checkpoint (the 9B's decoder at a CPU-friendly size, DESIGN.md), it
measures per variant: vision encoder ms for one image, prefill ms for a text prompt, decode
ms per token (median step time after warm-up). Missing inputs are built first:

    python benchmarks/onnx_speed.py                      # random-medium, export fp32+q4+int8, measure
    python benchmarks/onnx_speed.py --threads 2 --out benchmarks/results/onnx-speed-medium-cpu.json

The result file holds every number, the ratios against torch fp32 and the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from glm4v_edge.export.onnx_export import export_onnx
from glm4v_edge.files import atomic_write_text
from glm4v_edge.machine import describe_machine
from glm4v_edge.runtime.inputs import build_batch, user_message
from glm4v_edge.runtime.onnx_variant import OnnxVariant
from glm4v_edge.runtime.torch_variant import TorchVariant
from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint


class StepClock(BaseStreamer):
    """Timestamps every token ``generate`` emits (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 2)


def timed(function, repeats: int) -> list[float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def text_prompt(processor, tokens: int) -> list[dict]:
    """A user turn of about ``tokens`` tokens."""
    words = "the red circle moves left of the blue square and the green triangle ".split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    while len(processor.tokenizer(text)["input_ids"]) > tokens:
        text = text.rsplit(" ", 8)[0]
    return [user_message(text)]


def image_prompt(size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return [user_message("Describe the image.", images=[image])]


def measure_torch(variant: TorchVariant, image_batch, text_batch, decode_tokens: int, repeats: int) -> dict:
    model = variant.model
    with torch.inference_mode():
        vision = timed(lambda: model.model.get_image_features(
            image_batch["pixel_values"], image_batch["image_grid_thw"]), repeats)
        prefill = timed(lambda: model(**text_batch, logits_to_keep=1), repeats)
        steps = []
        for _ in range(max(1, repeats // 2)):
            clock = StepClock()
            model.generate(**text_batch, max_new_tokens=decode_tokens + 1, min_new_tokens=decode_tokens + 1,
                           do_sample=False, streamer=clock, pad_token_id=variant.tokens.pad)
            steps += list(np.diff(clock.times[2:]))  # token-to-token, after the first token
    return {"vision_ms": median_ms(vision), "prefill_ms": median_ms(prefill), "decode_ms_per_token": median_ms(steps)}


def measure_onnx(variant: OnnxVariant, image_batch, text_batch, decode_tokens: int, repeats: int) -> dict:
    image_inputs = {k: v.numpy() for k, v in image_batch.items()}
    vision = timed(lambda: variant.vision_features(image_inputs), repeats)
    prefill = timed(lambda: variant.prefill(text_batch), repeats)
    steps = []
    for _ in range(max(1, repeats // 2)):
        logits, state = variant.prefill(text_batch)
        run = []
        for _ in range(decode_tokens + 1):
            start = time.perf_counter()
            logits = variant.step(state, logits.argmax(-1))
            run.append(time.perf_counter() - start)
        steps += run[1:]  # the first step warms the cache path up
    return {"vision_ms": median_ms(vision), "prefill_ms": median_ms(prefill), "decode_ms_per_token": median_ms(steps)}


def measure(name: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """Load one variant and time it (runs in its own process)."""
    torch.set_num_threads(args.threads)
    if name == "torch-fp32":
        variant = TorchVariant(args.model, dtype=torch.float32, device="cpu")
    else:
        variant = OnnxVariant(args.artifacts, dtype=name.removeprefix("onnx-"), device="cpu", threads=args.threads)
    image_batch = build_batch(variant.processor, [image_prompt(args.image_size)])
    text_batch = build_batch(variant.processor, [text_prompt(variant.processor, args.prompt_tokens)])
    shapes = {"prompt_tokens": int(text_batch["input_ids"].shape[1]),
              "image_tokens": int(image_batch["image_grid_thw"].prod() // 4)}
    measure_variant = measure_torch if name == "torch-fp32" else measure_onnx
    return measure_variant(variant, image_batch, text_batch, args.decode_tokens, args.repeats), shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("artifacts/random-medium"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx-medium"))
    parser.add_argument("--dtypes", default="q4,int8", help="ONNX precisions to time besides fp32.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx-speed-medium-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = ["fp32", *[d for d in args.dtypes.split(",") if d and d != "fp32"]]

    if not args.model.exists():
        print(f"writing random checkpoint {args.model}")
        write_random_checkpoint("medium", args.model, dtype="bf16")
    if not args.artifacts.exists():
        print(f"exporting {args.artifacts} ({', '.join(dtypes)}), parity included")
        export_onnx(args.model, args.artifacts, dtypes, report=print)

    # Each variant in a fresh process: one variant's threads and memory must not slow the next.
    results, shapes = {}, {}
    spawn = multiprocessing.get_context("spawn")
    for name in ["torch-fp32", *(f"onnx-{dtype}" for dtype in dtypes)]:
        print(f"measuring {name}")
        with spawn.Pool(1) as pool:
            results[name], shapes = pool.apply(measure, (name, args))
    base = results["torch-fp32"]
    speedups = {name: {key: round(base[key] / value, 2) for key, value in numbers.items()}
                for name, numbers in results.items()}
    record = {
        "benchmark": "benchmarks/onnx_speed.py",
        "model": str(args.model),
        "settings": {"threads": args.threads, "image_size": args.image_size, **shapes,
                     "decode_tokens": args.decode_tokens, "repeats": args.repeats,
                     "isolation": "each variant measured in its own fresh process"},
        "results": results,
        "speedup_vs_torch_fp32": speedups,
        "parity": json.loads((args.artifacts / "manifest.json").read_text())["parity"],
        "machine": describe_machine(),
    }
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    for name, numbers in results.items():
        ratio = speedups[name]
        print(f"{name:>12}: vision {numbers['vision_ms']:8.1f} ms ({ratio['vision_ms']}x)  "
              f"prefill {numbers['prefill_ms']:8.1f} ms ({ratio['prefill_ms']}x)  "
              f"decode {numbers['decode_ms_per_token']:7.1f} ms/token ({ratio['decode_ms_per_token']}x)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
