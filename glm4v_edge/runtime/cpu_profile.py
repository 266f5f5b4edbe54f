"""The CPU profile: on CPU, images are resized to at most ``CPU_MAX_PIXELS`` (height x width)
before the vision encoder, by the processor itself (its ``size.longest_edge``, GLM-4.1V's own
``max_pixels``). That limit counts frames x height x width, and the processor sees an image as
``temporal_patch_size`` (2) identical frames: an image limit of N pixels is ``2 N`` there.

GLM-4.1V's processor allows 9.6-11.8 M of those (4.8-5.9 MP images, 6144-7500 image tokens): on
2 CPU cores the 9B model would take many minutes before its first token. The limit is chosen by
measurement on the 9B shape, onnx-q4, 2 threads (benchmarks/results/cpu-profile-9b-amd-epyc-2026-11-30.json):
a one-image question's time to first token was 18 s at 448 px (256 image tokens), 39 s at 672 px
and 59 s at 784 px (784 tokens), the limit: about a minute. A video gets the same budget across
its frames: an 8 s, 16-frame 640x360 clip became 728 tokens and 45 s
(cpu-profile-video-9b-amd-epyc-2026-11-30.json). ``GLM4V_EDGE_MAX_PIXELS`` sets another
limit in image pixels (on any device; higher costs time, lower loses detail). The benchmark
measures the sizes it is asked for and does not apply it.
"""

from __future__ import annotations

import dataclasses
import os

from glm4v_edge.errors import Glm4vEdgeError

CPU_MAX_PIXELS = 784 * 784  # image height x width: 784 image tokens (28 x 28 pixels each)
MAX_PIXELS_ENV = "GLM4V_EDGE_MAX_PIXELS"


def max_pixels_for(device: str) -> int | None:
    """The image-size limit to apply on ``device``: the variable's value, else the CPU profile's."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 28 * 28:
            raise Glm4vEdgeError(f"{MAX_PIXELS_ENV} must be a whole number of pixels >= 784, not {value!r}")
        return int(value)
    return CPU_MAX_PIXELS if device == "cpu" else None


def media_processors(processor) -> list:
    return [part for part in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None))
            if part is not None]


def apply_max_pixels(processor, max_pixels: int | None) -> None:
    """Lower the processor's own limits to ``max_pixels`` image pixels (never raise them: a
    checkpoint with a smaller limit keeps it). A video gets the same budget across all its
    frames (the video processor's limit counts every frame): as many image tokens as one image
    at the limit, so a video question waits about as long as an image question."""
    if max_pixels is None:
        return
    for part in media_processors(processor):
        limit = max_pixels * part.temporal_patch_size  # the limit counts frames; an image is 2 of them
        if part.size.longest_edge is None or part.size.longest_edge > limit:
            part.size = dataclasses.replace(part.size, longest_edge=limit)


def remove_max_pixels(processor) -> None:
    """Lift the processor's own limits: for measurements that must get exactly the sizes they name."""
    for part in media_processors(processor):
        part.size = dataclasses.replace(part.size, longest_edge=10**12)
