"""Latency of one variant, stage by stage, through the ``Variant`` protocol only.

Vision: ``encode_vision`` on one generated image per size. Prefill: ``prompt_logits`` on text
prompts of fixed token lengths. Time to first token and decode: ``generate`` on a fixed image
question, from the stream's own timestamps (token-to-token intervals after the first token).
Follow-up: the time to first token of a second turn about the same image (the history as the
demo sends it), from the first turn's prompt cache; each run starts with an empty cache.
Every stage is warmed up once, then timed ``runs`` times; medians and p90s are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from glm4v_edge.messages import answer_message, user_message
from glm4v_edge.runtime.cpu_profile import CPU_MAX_PIXELS
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.prompt_cache import DEFAULT_PROMPT_CACHE_GB, PromptCache
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling
from glm4v_edge.thinking import Reply, history_text

if TYPE_CHECKING:
    from glm4v_edge.bench.machine_peak import ReadProbe

FOLLOW_UP = "What else do you see in the image?"
FILLER = ["the", "red", "circle", "moves", "left", "of", "the", "blue", "square", "and", "the", "green", "triangle"]


@dataclass(frozen=True)
class PromptSet:
    """Shapes to time: image sides (px), prompt lengths (tokens), decode length."""

    image_sizes: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    decode_tokens: int


PROMPT_SETS = {
    "quick": PromptSet(image_sizes=(224,), prompt_tokens=(128,), decode_tokens=16),
    "standard": PromptSet(image_sizes=(224, 448, 896), prompt_tokens=(128, 512, 2048), decode_tokens=64),
    "gpu": PromptSet(image_sizes=(448, 896), prompt_tokens=(512, 2048), decode_tokens=64),  # the card's GPU run
    # the 9B on a 2-core CPU: the CPU profile's largest square image (also the time-to-first-token
    # question's), and 448 px
    "cpu": PromptSet(image_sizes=(math.isqrt(CPU_MAX_PIXELS), 448), prompt_tokens=(512,), decode_tokens=32),
    "none": PromptSet(image_sizes=(), prompt_tokens=(), decode_tokens=0),  # accuracy-only runs
}


def image_of(size: int) -> Image.Image:
    rng = np.random.default_rng(size)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def text_of(processor, tokens: int) -> str:
    """Filler text of at most ``tokens`` tokens."""
    text = " ".join(FILLER[i % len(FILLER)] for i in range(tokens))
    while len(processor.tokenizer(text)["input_ids"]) > tokens:
        text = text.rsplit(" ", 8)[0]
    return text


def stats(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"median_ms": round(float(np.median(ms)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "samples": len(ms)}


def timed(function, runs: int) -> dict:
    function()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return stats(times)


def measure_latency(variant: MeasurableVariant, prompts: PromptSet, runs: int,
                    reads: ReadProbe | None = None) -> dict | None:
    """``reads``: its loops are measured before each generate run and after the last, in turns with
    the decode they bound."""
    if not prompts.decode_tokens:
        return None
    processor = variant.processor
    merged = processor.image_processor.merge_size ** 2  # patches per image token
    vision = {}
    for size in prompts.image_sizes:
        batch = build_batch(processor, [[user_message("Describe the image.", images=[image_of(size)])]])
        vision[f"{size}px"] = {**timed(lambda batch=batch: variant.encode_vision(batch), runs),
                               "image_tokens": int(batch["image_grid_thw"].prod()) // merged}
    prefill = {}
    for tokens in prompts.prompt_tokens:
        if tokens >= variant.context_length - prompts.decode_tokens:
            continue  # the embedded model's context is 4096; skip lengths it cannot hold
        batch = build_batch(processor, [[user_message(text_of(processor, tokens))]])
        prefill[f"{tokens}"] = {**timed(lambda batch=batch: variant.prompt_logits(batch), runs),
                                "prompt_tokens": int(batch["input_ids"].shape[1])}

    messages = [user_message("Describe the image in detail.", images=[image_of(prompts.image_sizes[0])])]
    first_prompt_tokens = int(build_batch(processor, [messages])["input_ids"].shape[1])
    follows = getattr(variant, "supports_prompt_cache", False)
    first, steps, generated, second, reused = [], [], [], [], []
    for run in range(runs + 1):
        if reads is not None and run > 0:
            reads.sample()
        if follows:  # empty per run: turn one finds nothing, turn two finds turn one
            variant.prompt_cache = PromptCache.from_gb(DEFAULT_PROMPT_CACHE_GB)
        events = list(variant.generate(messages, max_new_tokens=prompts.decode_tokens, sampling=Sampling.greedy()))
        answer = history_text(Reply.from_pieces([piece for event in events for piece in event.pieces]))
        turn_two = [*messages, answer_message(answer), user_message(FOLLOW_UP)]
        follow_up = next(iter(variant.generate(turn_two, max_new_tokens=1, sampling=Sampling.greedy())), None) \
            if follows else None
        variant.prompt_cache = None
        times = [event.elapsed_s for event in events]
        if run == 0 or not times:
            continue  # warm-up
        first.append(times[0])
        steps += list(np.diff(times))
        generated.append(len(times))
        if follow_up is not None:
            second.append(follow_up.elapsed_s)
            reused.append(follow_up.cached_tokens)
    if reads is not None and steps:
        reads.sample()
    decode = stats(steps) if steps else None
    return {
        "vision": vision,
        "prefill": prefill,
        "time_to_first_token": ({**stats(first), "image_px": prompts.image_sizes[0],
                                 "prompt_tokens": first_prompt_tokens} if first else None),
        "follow_up": ({**stats(second), "cached_tokens": reused, "question": FOLLOW_UP} if second else None),
        "decode": decode and {**decode, "tokens_per_s": round(1000 / decode["median_ms"], 2),
                              "tokens_per_run": generated,
                              **({"reads_in_turns": reads.fastest()} if reads is not None and reads.samples else {})},
    }
