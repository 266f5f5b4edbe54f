"""Write a task sample's media to files, so it can be asked through the CLI or the demo."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from glm4v_edge.media import Video
from glm4v_edge.tiny import task
from glm4v_edge.tiny.eval import HELDOUT_SPLIT


def write_video(video: Video, path: Path) -> Path:
    """H.264 MP4 at the video's fps (frames cropped to even sizes, as yuv420p needs)."""
    frames = video.frames
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    tmp = path.with_name(f".{path.name}.partial.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(video.metadata.fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode())
    tmp.replace(path)
    return path


def write_sample(out: Path, qtype: str, index: int = 0) -> tuple[task.Sample, list[Path]]:
    """The ``index``-th held-out sample of ``qtype``, its media written under ``out``."""
    position = task.QUESTION_TYPES.index(qtype) + index * len(task.QUESTION_TYPES)
    sample = task.make_sample(HELDOUT_SPLIT, position)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for number, image in enumerate(sample.images, 1):
        suffix = f"-{number}" if len(sample.images) > 1 else ""
        path = out / f"{qtype}-{index}{suffix}.png"
        tmp = path.with_name(f".{path.name}.partial.png")
        image.save(tmp)
        tmp.replace(path)
        files.append(path)
    if sample.video is not None:
        files.append(write_video(sample.video, out / f"{qtype}-{index}.mp4"))
    return sample, files
