"""Reading images and videos a user hands us, with one-line errors for bad files.

Only decoding and colour-mode normalisation happen here; resizing, patching and
normalisation stay in the transformers processor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.video_utils import VideoMetadata
from transformers.video_utils import load_video as transformers_load_video

from glm4v_edge.errors import Glm4vEdgeError, first_line

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


@dataclass
class Video:
    """Decoded frames (T, H, W, 3 uint8) with the metadata the processor needs for timestamps."""

    frames: np.ndarray
    metadata: VideoMetadata

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float) -> Video:
        count, height, width = frames.shape[:3]
        metadata = VideoMetadata(
            total_num_frames=count, fps=fps, width=width, height=height,
            duration=count / fps, frames_indices=list(range(count)),
        )
        return cls(frames=frames, metadata=metadata)


def check_file(path: str | Path, kind: str, name: str | None = None) -> Path:
    """``path`` if it is a non-empty file; ``name``: how errors call it (default: the path)."""
    path = Path(path)
    shown = name or path
    if not path.exists():
        raise Glm4vEdgeError(f"{kind} not found: {shown}")
    if not path.is_file():
        raise Glm4vEdgeError(f"{kind} is not a file: {shown}")
    if path.stat().st_size == 0:
        raise Glm4vEdgeError(f"{kind} file is empty (0 bytes): {shown}")
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float scaled, transparency flattened on white."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode in SIXTEEN_BIT_MODES or peak > 255:
            values = values / 257.0  # 65535 -> 255
        elif image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        image = flat
    return image.convert("RGB")


def load_image(path: str | Path, name: str | None = None) -> Image.Image:
    """Decode an image file fully (so truncation shows up here) and return it as RGB. ``name``:
    how errors call the file (a server names the request's part, not its temporary file)."""
    path = check_file(path, "image", name)
    shown = name or path
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return to_rgb(image)
    except UnidentifiedImageError:
        raise Glm4vEdgeError(f"not an image Pillow can read: {shown}") from None
    except Image.DecompressionBombError as error:
        raise Glm4vEdgeError(f"image is too large to decode safely: {shown} ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise Glm4vEdgeError(f"image is truncated or corrupt: {shown} ({error})") from None


def load_video(path: str | Path, sample_indices_fn: Callable, name: str | None = None) -> Video:
    """Decode a video with transformers' PyAV loader, sampling frames with the processor's rule."""
    path = check_file(path, "video", name)
    shown = name or path
    try:
        frames, metadata = transformers_load_video(str(path), backend="pyav", sample_indices_fn=sample_indices_fn)
    except Exception as error:  # PyAV raises many types (InvalidDataError, OSError, ValueError ...)
        raise Glm4vEdgeError(f"cannot read video: {shown} ({first_line(error).replace(str(path), str(shown))})") \
            from None
    if len(frames) == 0:
        raise Glm4vEdgeError(f"video has no frames: {shown}")
    return Video(frames=np.asarray(frames), metadata=metadata)


def probe_video(path: str | Path) -> Path:
    """Check that a file opens as a video with at least one video stream, without decoding it."""
    import av

    path = check_file(path, "video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise Glm4vEdgeError(f"no video stream in {path}")
    except Glm4vEdgeError:
        raise
    except Exception as error:  # PyAV raises many types
        raise Glm4vEdgeError(f"cannot read video: {path} ({first_line(error)})") from None
    return path
