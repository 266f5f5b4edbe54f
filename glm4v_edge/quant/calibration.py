"""Calibration prompts for GPTQ: chat-template-rendered image+text (and text-only) conversations.

GPTQ fits each layer to the activations it sees while calibrating, so the prompts must look
like real use: the chat template with image tokens in the decoder's input. Sources:

* the embedded model: its own training distribution (task questions with their target replies);
* a user folder: images (a sidecar ``<image stem>.txt`` holds its prompt, else a generic one)
  plus optional text-only prompts in ``prompts.txt``, one per line;
* a Hugging Face ``datasets`` folder (``save_to_disk``) or parquet file(s) with an image column
  and a text column;
* a built-in fallback for any real checkpoint: generated images with generic questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from glm4v_edge import shapes
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.local_datasets import first_image_column, is_saved_dataset, load_rows
from glm4v_edge.media import load_image, to_rgb
from glm4v_edge.messages import IMAGE_SUFFIXES, user_message
from glm4v_edge.runtime.inputs import build_batch

# Fewer usable samples than this and the Hessian estimates are too noisy to trust.
MIN_SAMPLES = 8
TEXT_COLUMNS = ("question", "prompt", "query", "instruction", "text", "caption")
# One in this many calibration samples is text-only, so plain chat is calibrated too.
TEXT_ONLY_EVERY = 8

GENERIC_QUESTIONS = (
    "Describe this image in detail.",
    "What objects are in this picture, and what colours are they?",
    "How many distinct objects can you count? Explain.",
    "What is happening in this image?",
    "Write a short caption for this image.",
    "Which object is the largest, and where is it?",
)
GENERIC_TEXT_PROMPTS = (
    "Explain step by step how to compute 17 * 23.",
    "Write a short poem about the sea.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the causes of the French Revolution in three sentences.",
    "Translate 'good morning, how are you?' into French and German.",
)

Warn = Callable[[str], None]


@dataclass(frozen=True)
class CalibrationSample:
    """One conversation to calibrate on; ``target`` (if any) is appended as the reply."""

    source: str  # where it came from, recorded in the manifest
    messages: list[dict]
    target: str | None = None

    def batch(self, processor) -> dict:
        return dict(build_batch(processor, [self.messages], continuations=[self.target] if self.target else None))

    def record(self, tokens: int) -> dict:
        images = sum(1 for m in self.messages if isinstance(m.get("content"), list)
                     for item in m["content"] if item.get("type") in ("image", "video"))
        return {"source": self.source, "media": images, "tokens": tokens}


def with_text_only(count: int, media_sample: Callable[[int], CalibrationSample]) -> list[CalibrationSample]:
    """``count`` samples: one in ``TEXT_ONLY_EVERY`` a generic text prompt, the rest ``media_sample(index)``."""
    samples = []
    for index in range(count):
        if index % TEXT_ONLY_EVERY == TEXT_ONLY_EVERY - 1:
            prompt = GENERIC_TEXT_PROMPTS[index % len(GENERIC_TEXT_PROMPTS)]
            samples.append(CalibrationSample(f"text:{index}", [user_message(prompt)]))
        else:
            samples.append(media_sample(index))
    return samples


def embedded_samples(count: int) -> list[CalibrationSample]:
    """The embedded model's training distribution: task questions with their target replies."""
    def task_sample(index: int) -> CalibrationSample:
        sample = shapes.make_sample(shapes.TRAIN_SPLIT, index)
        return CalibrationSample(f"task:train/{index}:{sample.qtype}", sample.messages(), sample.target())

    return with_text_only(count, task_sample)


def builtin_samples(count: int, seed: int = 0) -> list[CalibrationSample]:
    """For a real checkpoint with no data given: generated shape images (varied aspect ratios)
    with generic questions, and generic text prompts. Weaker than real images; say so."""
    def generated_sample(index: int) -> CalibrationSample:
        image = shapes.make_sample("calibration", index).images or shapes.make_sample("calibration", index + 1).images
        question = GENERIC_QUESTIONS[random.Random(seed + index).randrange(len(GENERIC_QUESTIONS))]
        return CalibrationSample(f"builtin:{index}", [user_message(question, images=image[:1])])

    return with_text_only(count, generated_sample)


def folder_samples(folder: Path, count: int, warn: Warn) -> list[CalibrationSample]:
    """Images in ``folder`` (sorted) with their sidecar prompts, then ``prompts.txt`` lines."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    prompts_file = folder / "prompts.txt"
    text_prompts = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()] \
        if prompts_file.is_file() else []
    samples, skipped = [], 0
    for index, path in enumerate(images):
        try:
            image = load_image(path)  # decoded now: a bad file is skipped here, not mid-quantization
        except Glm4vEdgeError as error:
            skipped += 1
            warn(f"skipped: {error}")
            continue
        sidecar = path.with_suffix(".txt")
        generic = GENERIC_QUESTIONS[index % len(GENERIC_QUESTIONS)]
        question = sidecar.read_text().strip() if sidecar.is_file() else generic
        samples.append(CalibrationSample(path.name, [user_message(question or GENERIC_QUESTIONS[0], images=[image])]))
    samples += [CalibrationSample(f"prompts.txt:{i + 1}", [user_message(p)]) for i, p in enumerate(text_prompts)]
    if skipped:
        warn(f"{skipped} of {len(images)} images in {folder} could not be read and were skipped")
    return samples[:count]


def dataset_samples(path: Path, count: int, warn: Warn) -> list[CalibrationSample]:
    """A ``datasets.save_to_disk`` folder or parquet file(s): first image column + first text column."""
    data = load_rows(path)
    image_column = first_image_column(data)
    text_column = next((name for name in TEXT_COLUMNS if name in data.features), None)
    if image_column is None or text_column is None:
        raise Glm4vEdgeError(f"the dataset at {path} needs an image column and a text column "
                             f"({', '.join(TEXT_COLUMNS)}); it has: {', '.join(data.features)}")
    samples, skipped = [], 0
    for index in range(min(count, len(data))):
        try:
            row = data[index]
            image = row[image_column]
            if not isinstance(image, Image.Image):
                raise ValueError("not an image")
            image.load()
            image = to_rgb(image)
        except Exception as error:  # undecodable bytes surface from PIL or datasets' decoder
            skipped += 1
            warn(f"skipped row {index}: unreadable image ({first_line(error)})")
            continue
        messages = [user_message(str(row[text_column]), images=[image])]
        samples.append(CalibrationSample(f"{path.name}[{index}]", messages))
    if skipped:
        warn(f"{skipped} rows of {path} had unreadable images and were skipped")
    return samples


def calibration_samples(data: Path | None, count: int, *, embedded: bool, warn: Warn) -> list[CalibrationSample]:
    """``count`` samples from ``data`` (folder or dataset), else the model's default source."""
    if data is None:
        samples = embedded_samples(count) if embedded else builtin_samples(count)
    else:
        data = Path(data)
        if not data.exists():
            raise Glm4vEdgeError(f"calibration data not found: {data}")
        is_dataset = data.is_file() or is_saved_dataset(data) or any(data.glob("*.parquet"))
        samples = dataset_samples(data, count, warn) if is_dataset else folder_samples(data, count, warn)
    if len(samples) < MIN_SAMPLES:
        raise Glm4vEdgeError(f"only {len(samples)} usable calibration samples; GPTQ needs at least {MIN_SAMPLES}")
    return samples
