"""The shapes task: procedurally generated questions about coloured shapes.

The embedded tiny model is trained on it; any GLM-4.1V can be asked its questions (parity,
calibration and the benchmark use them as fixed, verifiable prompts).

Every sample is a deterministic function of (split, index): the same seed gives the same
images, question and target on every machine. The train and held-out splits draw from
separate random streams, so training never sees a held-out sample.

Question types:
    count       how many shapes are in one image (1-4)
    color       the colour of the only shape of a kind in one image
    shape       the kind of the only shape of a colour in one image
    two_images  the colour of the shape in the first or second of two images
    motion      which way one shape moves in a short video (left/right/up/down)

Targets use the real model's output format: ``<think>…</think><answer>…</answer>`` with the
final answer in ``<|begin_of_box|>…<|end_of_box|>``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import Video
from glm4v_edge.messages import user_message

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 195, 25),
    "purple": (140, 60, 185),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
QUESTION_TYPES = ("count", "color", "shape", "two_images", "motion")
TRAIN_SPLIT, HELDOUT_SPLIT = "train", "heldout"
MAX_SHAPES = 4
VIDEO_FPS = 2.0
VIDEO_FRAMES = 4

COUNT_QUESTIONS = (
    "How many shapes are in the image?",
    "How many shapes are there?",
    "Count the shapes in this picture.",
)
COLOR_QUESTIONS = ("What color is the {shape}?", "Which color does the {shape} have?")
SHAPE_QUESTIONS = ("What shape is the {color} object?", "Which shape is {color}?")
TWO_IMAGE_QUESTIONS = (
    "What color is the shape in the {ordinal} image?",
    "Which color is the shape shown in the {ordinal} image?",
)
MOTION_QUESTIONS = ("In which direction does the {shape} move?", "Which way is the {shape} moving?")


@dataclass(frozen=True)
class DrawnShape:
    kind: str
    color: str
    cx: float
    cy: float
    radius: float


@dataclass
class Sample:
    """One question with its media and the target the model should write."""

    qtype: str
    question: str
    thinking: str
    answer: str
    images: list[Image.Image] = field(default_factory=list)
    video: Video | None = None
    layouts: list[list[DrawnShape]] = field(default_factory=list)  # the shapes in each image or video frame

    def messages(self) -> list[dict]:
        """The user turn in the transformers chat format (media first, then the question)."""
        return [user_message(self.question, images=self.images, video=self.video)]

    def target(self, with_thinking: bool = True) -> str:
        """The assistant's reply in the real output format."""
        thinking = self.thinking if with_thinking else ""
        return f"<think>{thinking}</think><answer><|begin_of_box|>{self.answer}<|end_of_box|></answer>"


@dataclass(frozen=True)
class Difficulty:
    """Curriculum knob: how crowded and how small the shapes may be (1.0 = the task proper)."""

    level: float = 1.0

    @property
    def max_shapes(self) -> int:
        return 1 + round((MAX_SHAPES - 1) * self.level)

    @property
    def radius_range(self) -> tuple[float, float]:
        # Radii as a fraction of the image's short side; small shapes only at full difficulty.
        return 0.30 - 0.16 * self.level, 0.34 - 0.12 * self.level


def rng_for(split: str, index: int) -> random.Random:
    """The random stream of one sample; splits never share a stream."""
    return random.Random(f"glm4v-edge-tiny/{split}/{index}")


def make_sample(split: str, index: int, difficulty: Difficulty = Difficulty()) -> Sample:
    rng = rng_for(split, index)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    return QUESTION_MAKERS[qtype](rng, difficulty)


def make_samples(split: str, count: int, start: int = 0) -> list[Sample]:
    return [make_sample(split, i) for i in range(start, start + count)]


def heldout(qtype: str, index: int = 0) -> Sample:
    """The ``index``-th held-out sample of one question type."""
    return make_sample(HELDOUT_SPLIT, QUESTION_TYPES.index(qtype) + index * len(QUESTION_TYPES))


# --- drawing -------------------------------------------------------------------------------


def random_canvas_size(rng: random.Random) -> tuple[int, int]:
    """Width and height between 96 and 252 px: square, wide and tall images."""
    return rng.randrange(96, 253), rng.randrange(96, 253)


def background(rng: random.Random) -> tuple[int, int, int]:
    grey = rng.randrange(225, 256)
    return (grey, grey, rng.randrange(220, 256))


def draw_shape(draw: ImageDraw.ImageDraw, shape: DrawnShape, fill: int | tuple[int, ...] | None = None) -> None:
    x, y, r = shape.cx, shape.cy, shape.radius
    fill = COLORS[shape.color] if fill is None else fill
    if shape.kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.kind == "square":
        side = r * 0.9
        draw.rectangle([x - side, y - side, x + side, y + side], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.8), (x - r * 0.95, y + r * 0.8)], fill=fill)


def render(size: tuple[int, int], shapes: list[DrawnShape], bg: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape)
    return image


def object_mask(size: tuple[int, int], shapes: list[DrawnShape]) -> np.ndarray:
    """(H, W) uint8: 0 for background, i + 1 where shape i is drawn."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for index, shape in enumerate(shapes):
        draw_shape(draw, shape, fill=index + 1)
    return np.asarray(mask)


def place_shapes(
    rng: random.Random, size: tuple[int, int], specs: list[tuple[str, str]], difficulty: Difficulty
) -> list[DrawnShape]:
    """Non-overlapping positions for (kind, color) specs; shrinks radii until they fit."""
    width, height = size
    low, high = difficulty.radius_range
    short = min(width, height)
    for attempt in range(200):
        shrink = 0.97 ** (attempt // 10)
        placed: list[DrawnShape] = []
        for kind, color in specs:
            radius = max(8.0, rng.uniform(low, high) * short * shrink)
            for _ in range(50):
                cx = rng.uniform(radius + 1, width - radius - 1)
                cy = rng.uniform(radius + 1, height - radius - 1)
                if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 > (radius + o.radius + 3) ** 2 for o in placed):
                    placed.append(DrawnShape(kind, color, cx, cy, radius))
                    break
            else:
                break
        if len(placed) == len(specs):
            return placed
    raise RuntimeError(f"could not place {len(specs)} shapes on a {width}x{height} canvas")


def random_specs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    return [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(count)]


def one_image(
    rng: random.Random, specs: list[tuple[str, str]], difficulty: Difficulty
) -> tuple[Image.Image, list[DrawnShape]]:
    size = random_canvas_size(rng)
    shapes = place_shapes(rng, size, specs, difficulty)
    return render(size, shapes, background(rng)), shapes


# --- question makers -----------------------------------------------------------------------
# Thinking first lists what the image shows, in a fixed order (colour, then kind), the way
# GLM-4.1V describes an image before it answers; the answer then follows from that list.


def listing(specs: list[tuple[str, str]]) -> str:
    """'a red circle, a blue square and a green triangle', in palette order."""
    color_rank = {c: i for i, c in enumerate(COLORS)}
    ordered = sorted(specs, key=lambda spec: (color_rank[spec[1]], SHAPES.index(spec[0])))
    names = [f"a {color} {kind}" for kind, color in ordered]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def image_fields(drawn: list[tuple[Image.Image, list[DrawnShape]]]) -> dict:
    return {"images": [image for image, _ in drawn], "layouts": [shapes for _, shapes in drawn]}


def make_count(rng: random.Random, difficulty: Difficulty) -> Sample:
    count = rng.randint(1, difficulty.max_shapes)
    specs = random_specs(rng, count)
    noun = "shape" if count == 1 else "shapes"
    return Sample(
        qtype="count",
        question=rng.choice(COUNT_QUESTIONS),
        thinking=f"I see {listing(specs)}. That makes {count} {noun}.",
        answer=str(count),
        **image_fields([one_image(rng, specs, difficulty)]),
    )


def make_color(rng: random.Random, difficulty: Difficulty) -> Sample:
    kind = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    others = [(rng.choice([s for s in SHAPES if s != kind]), rng.choice(list(COLORS)))
              for _ in range(rng.randint(0, difficulty.max_shapes - 1))]
    specs = [(kind, color), *others]
    return Sample(
        qtype="color",
        question=rng.choice(COLOR_QUESTIONS).format(shape=kind),
        thinking=f"I see {listing(specs)}. The {kind} is {color}.",
        answer=color,
        **image_fields([one_image(rng, specs, difficulty)]),
    )


def make_shape(rng: random.Random, difficulty: Difficulty) -> Sample:
    kind = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    others = [(rng.choice(SHAPES), rng.choice([c for c in COLORS if c != color]))
              for _ in range(rng.randint(0, difficulty.max_shapes - 1))]
    specs = [(kind, color), *others]
    return Sample(
        qtype="shape",
        question=rng.choice(SHAPE_QUESTIONS).format(color=color),
        thinking=f"I see {listing(specs)}. The {color} object is a {kind}.",
        answer=kind,
        **image_fields([one_image(rng, specs, difficulty)]),
    )


def make_two_images(rng: random.Random, difficulty: Difficulty) -> Sample:
    first_color, second_color = rng.sample(list(COLORS), 2)
    first_spec, second_spec = (rng.choice(SHAPES), first_color), (rng.choice(SHAPES), second_color)
    ordinal = rng.choice(("first", "second"))
    color = first_color if ordinal == "first" else second_color
    return Sample(
        qtype="two_images",
        question=rng.choice(TWO_IMAGE_QUESTIONS).format(ordinal=ordinal),
        thinking=(f"The first image shows {listing([first_spec])}. The second image shows "
                  f"{listing([second_spec])}. The shape in the {ordinal} image is {color}."),
        answer=color,
        **image_fields([one_image(rng, [first_spec], difficulty), one_image(rng, [second_spec], difficulty)]),
    )


def make_motion(rng: random.Random, difficulty: Difficulty) -> Sample:
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    direction = rng.choice(DIRECTIONS)
    width, height = random_canvas_size(rng)
    radius = max(10.0, min(width, height) * rng.uniform(0.12, 0.18))
    # The shape crosses most of the frame along its axis and wanders a little across it.
    along = np.linspace(0.2, 0.8, VIDEO_FRAMES) + rng.uniform(-0.05, 0.05)
    if direction in ("left", "up"):
        along = along[::-1]
    across = rng.uniform(0.3, 0.7)
    bg = background(rng)
    frames, layouts = [], []
    for t in along:
        fx, fy = (t, across) if direction in ("left", "right") else (across, t)
        shape = DrawnShape(kind, color, radius + fx * (width - 2 * radius), radius + fy * (height - 2 * radius), radius)
        frames.append(np.asarray(render((width, height), [shape], bg)))
        layouts.append([shape])
    start, end = {"left": ("right", "left"), "right": ("left", "right"),
                  "up": ("bottom", "top"), "down": ("top", "bottom")}[direction]
    return Sample(
        qtype="motion",
        question=rng.choice(MOTION_QUESTIONS).format(shape=kind),
        thinking=f"I see a {color} {kind}. It starts at the {start} and ends at the {end}. It moves {direction}.",
        answer=direction,
        video=Video.from_frames(np.stack(frames), fps=VIDEO_FPS),
        layouts=layouts,
    )


QUESTION_MAKERS = {
    "count": make_count,
    "color": make_color,
    "shape": make_shape,
    "two_images": make_two_images,
    "motion": make_motion,
}


# --- media files -----------------------------------------------------------------------------


def write_video(video: Video, path: Path) -> Path:
    """H.264 MP4 at the video's fps (frames cropped to even sizes, as yuv420p needs)."""
    import av

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


def write_sample(out: Path, qtype: str, index: int = 0) -> tuple[Sample, list[Path]]:
    """The ``index``-th held-out sample of ``qtype``, its media written under ``out``."""
    if qtype not in QUESTION_TYPES:
        raise Glm4vEdgeError(f"unknown question type {qtype!r}; choose one of: {', '.join(QUESTION_TYPES)}")
    sample = heldout(qtype, index)
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
