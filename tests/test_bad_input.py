"""Bad input: a clear one-line error and exit status 1; odd but valid images just work."""

import numpy as np
import pytest
from PIL import Image

from glm4v_edge import shapes
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import load_image, load_video
from glm4v_edge.messages import MAX_IMAGES_PER_MESSAGE, user_message
from glm4v_edge.runtime.inputs import build_batch
from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture
def shapes_png(tmp_path):
    image = Image.new("RGB", (140, 112), "white")
    image.paste((215, 40, 40), (20, 20, 70, 70))
    path = tmp_path / "shapes.png"
    image.save(path)
    return path


def make_bad_file(tmp_path, kind: str):
    if kind == "zero-byte":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "text-named-png":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    elif kind == "truncated-jpeg":
        path = tmp_path / "cut.jpg"
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [("zero-byte", "empty"), ("text-named-png", "not an image"), ("truncated-jpeg", "truncated or corrupt")],
)
def test_broken_image_files(tmp_path, kind, message):
    path = make_bad_file(tmp_path, kind)
    with pytest.raises(Glm4vEdgeError, match=message):
        load_image(path)
    assert_one_line_error(run_cli("chat", "How many shapes?", "--image", str(path)), message, str(path))


def test_missing_image_path(tmp_path):
    missing = tmp_path / "nope.png"
    assert_one_line_error(run_cli("chat", "Hi", "--image", str(missing)), "image not found", str(missing))


@pytest.mark.parametrize("kind", ["text-named-mp4", "zero-byte-mp4", "missing-mp4"])
def test_unreadable_video(tmp_path, kind):
    path = tmp_path / "clip.mp4"
    if kind == "text-named-mp4":
        path.write_text("not a video")
    elif kind == "zero-byte-mp4":
        path.write_bytes(b"")
    message = {"text-named-mp4": "cannot read video", "zero-byte-mp4": "empty", "missing-mp4": "video not found"}[kind]
    with pytest.raises(Glm4vEdgeError, match=message):
        load_video(path, sample_indices_fn=lambda metadata, **_: np.arange(metadata.total_num_frames))
    assert_one_line_error(run_cli("chat", "Which way?", "--video", str(path)), message)


def test_too_many_images(shapes_png):
    args = ["chat", "How many shapes?"]
    for _ in range(MAX_IMAGES_PER_MESSAGE + 1):
        args += ["--image", str(shapes_png)]
    assert_one_line_error(run_cli(*args), f"{MAX_IMAGES_PER_MESSAGE + 1} images in one message")


def test_prompt_over_context_length():
    long_prompt = "count the shapes " * 2000
    assert_one_line_error(run_cli("chat", long_prompt), "the model's context is 4096 tokens")


def test_images_and_video_together_are_refused(tiny_processor, shapes_png, tmp_path):
    _, (video,) = shapes.write_sample(tmp_path, "motion")
    with pytest.raises(Glm4vEdgeError, match="images or videos, not both"):
        build_batch(tiny_processor, [[user_message("Hi", images=[shapes_png], video=video)]])


# --- odd images that must work ---------------------------------------------------------


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (64, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert 120 <= rgb[32, 0, 0] <= 135  # mid grey stays mid grey


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("RGB", (120, 120), (215, 40, 40)).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    red, green, blue = np.asarray(load_image(path))[60, 60]
    assert red > 180 and green < 90 and blue < 90


def test_palette_png_with_transparency_is_flattened_on_white(tmp_path):
    image = Image.new("P", (100, 100), 0)
    image.putpalette([0, 0, 0, 40, 80, 220] + [0] * 762)
    image.paste(1, (25, 25, 75, 75))
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    rgb = np.asarray(load_image(path))
    assert tuple(rgb[5, 5]) == (255, 255, 255)
    assert tuple(rgb[50, 50]) == (40, 80, 220)


def test_image_larger_than_max_pixels_is_resized_by_the_processor(tiny_processor, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (4000, 3000), "white").save(path)
    batch = build_batch(tiny_processor, [[user_message("How many shapes?", images=[path])]])
    t, h, w = batch["image_grid_thw"][0].tolist()
    max_pixels = tiny_processor.image_processor.size["longest_edge"]
    assert 2 * h * w * 14 * 14 <= max_pixels  # frames are paired: t * h * w pixels
    assert abs(w / h - 4 / 3) < 0.2


def test_odd_image_modes_answer_through_the_cli(tmp_path):
    path = tmp_path / "shapes_cmyk.jpg"
    Image.new("RGB", (168, 140), "white").convert("CMYK").save(path)
    result = run_cli("chat", "How many shapes are in the image?", "--image", str(path), "--max-new-tokens", "40")
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stderr
