"""The CPU profile: interactive commands on CPU cap image size through the processor's own
limit; the variable overrides it; the benchmark measures the sizes it names."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from glm4v_edge.bench.latency import image_of
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import Video
from glm4v_edge.messages import user_message
from glm4v_edge.runtime import cpu_profile
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.registry import load_from


def test_cpu_gets_the_profile_and_other_devices_do_not(monkeypatch):
    monkeypatch.delenv(cpu_profile.MAX_PIXELS_ENV, raising=False)
    assert cpu_profile.max_pixels_for("cpu") == cpu_profile.CPU_MAX_PIXELS
    assert cpu_profile.max_pixels_for("cuda") is None and cpu_profile.max_pixels_for("cuda:1") is None
    monkeypatch.setenv(cpu_profile.MAX_PIXELS_ENV, "1000000")
    assert cpu_profile.max_pixels_for("cpu") == 1_000_000 and cpu_profile.max_pixels_for("cuda") == 1_000_000
    for bad in ("lots", "-5", "100"):
        monkeypatch.setenv(cpu_profile.MAX_PIXELS_ENV, bad)
        with pytest.raises(Glm4vEdgeError, match=cpu_profile.MAX_PIXELS_ENV):
            cpu_profile.max_pixels_for("cpu")


@pytest.mark.parametrize("part", ["image_processor", "video_processor"])
def test_the_limit_only_ever_lowers_the_processors_own(tiny_processor, part):
    processor = copy.deepcopy(tiny_processor)  # the shared fixture stays as it is
    frames = getattr(processor, part).temporal_patch_size  # the processor's limit counts every frame
    own = getattr(processor, part).size.longest_edge
    cpu_profile.apply_max_pixels(processor, own)
    assert getattr(processor, part).size.longest_edge == own
    cpu_profile.apply_max_pixels(processor, own // frames // 4)
    assert getattr(processor, part).size.longest_edge == own // 4
    cpu_profile.apply_max_pixels(processor, None)
    assert getattr(processor, part).size.longest_edge == own // 4


def test_chat_variants_on_cpu_shrink_large_images_to_the_limit_and_the_benchmarks_do_not(monkeypatch):
    """The limit is in image pixels: a 224 x 224 limit is exactly 64 image tokens; an image that
    size keeps it, a larger one comes down to it."""
    monkeypatch.setenv(cpu_profile.MAX_PIXELS_ENV, str(224 * 224))
    profiled = load_from("torch", None, None, device="cpu")
    measured = load_from("torch", None, None, device="cpu", cpu_profile=False)

    def image_tokens(variant, side: int) -> int:
        batch = build_batch(variant.processor, [[user_message("Describe.", images=[image_of(side)])]])
        return int(batch["image_grid_thw"].prod()) // 4

    assert image_tokens(profiled, 224) == 64
    assert image_tokens(profiled, 896) == 64
    assert image_tokens(measured, 896) > 64


def test_a_video_gets_one_images_budget_across_its_frames(monkeypatch):
    monkeypatch.setenv(cpu_profile.MAX_PIXELS_ENV, str(224 * 224))
    frames = np.stack([np.roll(np.asarray(image_of(448)), 9 * i, axis=1) for i in range(4)])
    messages = [[user_message("What moves?", video=Video.from_frames(frames, fps=2.0))]]

    def video_tokens(variant) -> int:
        return int(build_batch(variant.processor, messages)["video_grid_thw"].prod(-1).sum()) // 4

    assert 32 <= video_tokens(load_from("torch", None, None, device="cpu")) <= 64
    assert video_tokens(load_from("torch", None, None, device="cpu", cpu_profile=False)) > 64
