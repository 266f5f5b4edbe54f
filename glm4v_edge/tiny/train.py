"""Train the tiny GLM-4.1V from scratch on the shapes task (CPU is enough; a GPU is used if asked).

What makes a model this small learn to look at the image within the hour:
- a curriculum from one big shape per image to the full task;
- a lower learning rate for the vision tower (at the decoder's rate it diverges);
- image features scaled at initialisation to the size of the text embeddings;
- an auxiliary per-token loss on the vision tower's output (``token_targets``), dropped
  after training;
- thinking that first lists what the image shows, so every object's colour and kind is a
  supervised word.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import BatchFeature, Glm4vForConditionalGeneration, Glm4vProcessor

from glm4v_edge import shapes
from glm4v_edge.files import check_output_folder
from glm4v_edge.machine import describe_machine
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.thinking import parse_reply
from glm4v_edge.tiny import build
from glm4v_edge.tiny.token_targets import TokenHead, batch_token_labels

END_OF_TURN = "<|user|>"  # the token the real model ends its turn with


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 4000
    batch_size: int = 32
    learning_rate: float = 1e-3
    vision_lr_scale: float = 0.5
    aux_weight: float = 1.0
    warmup_steps: int = 100
    curriculum_fraction: float = 0.3  # share of steps over which difficulty rises to 1
    no_thinking_fraction: float = 0.1  # targets with empty thinking, so budget 0 still answers
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainState:
    step: int
    loss: float
    probe_accuracy: float | None  # greedy exact match on the probe split (never evaluated on)
    elapsed: float


@dataclass
class TrainResult:
    model: Glm4vForConditionalGeneration
    processor: Glm4vProcessor
    settings: TrainSettings
    probes: list[TrainState]  # the states at which the probe ran
    seconds: float

    def record(self) -> dict:
        """What goes into training.json beside the weights: how this checkpoint was made."""
        return {
            "command": "glm4v-edge tiny train",
            "settings": asdict(self.settings),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_seconds": round(self.seconds, 1),
            "probes": [asdict(state) for state in self.probes],
            "machine": describe_machine(),
        }


def tokenizer_corpus(count: int = 4000) -> list[str]:
    """Every word the task can write or ask, from the train split."""
    texts = []
    for sample in shapes.make_samples(shapes.TRAIN_SPLIT, count):
        texts += [sample.question, sample.target()]
    return texts


def build_untrained(seed: int) -> tuple[Glm4vForConditionalGeneration, Glm4vProcessor]:
    tokenizer = build.build_tokenizer(tokenizer_corpus())
    processor = build.build_processor(tokenizer, budget="tiny")
    config = build.build_config(build.PRESETS["tiny"], tokenizer)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config)
    # Image features start ~4x smaller than text embeddings; match them so the decoder
    # does not learn to ignore the image before the vision tower has learned anything.
    with torch.no_grad():
        model.model.visual.merger.down_proj.weight.mul_(4.0)
    return model, processor


class BatchMaker:
    """Train-split samples -> labelled batches through the real processor and chat template.

    A batch holds either image questions or video questions: transformers' GLM-4.1V marks
    video frames with the image token, so one forward pass cannot place both kinds.
    """

    def __init__(self, processor: Glm4vProcessor, seed: int):
        self.processor = processor
        self.assistant_id = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
        self.rng = random.Random(seed)
        self.next_index = {"image": 0, "video": 0}

    def indices(self, modality: str, count: int) -> list[int]:
        """Successive train-split indices whose question is of this modality."""
        motion = shapes.QUESTION_TYPES.index("motion")
        found = []
        i = self.next_index[modality]
        while len(found) < count:
            if (i % len(shapes.QUESTION_TYPES) == motion) == (modality == "video"):
                found.append(i)
            i += 1
        self.next_index[modality] = i
        return found

    def encode(self, samples: list[shapes.Sample], thinking: list[bool]) -> BatchFeature:
        replies = [s.target(with_thinking=t) + END_OF_TURN for s, t in zip(samples, thinking)]
        batch = build_batch(self.processor, [s.messages() for s in samples], continuations=replies)
        # Loss only on the reply: everything after "<|assistant|>\n".
        ids = batch["input_ids"]
        labels = torch.full_like(ids, -100)
        for row, row_ids in enumerate(ids):
            start = int((row_ids == self.assistant_id).nonzero()[-1]) + 2
            labels[row, start:] = row_ids[start:]
        batch["labels"] = labels
        return batch

    def train_batch(self, step: int, settings: TrainSettings) -> tuple[BatchFeature, list[shapes.Sample]]:
        modality = "video" if step % len(shapes.QUESTION_TYPES) == 0 else "image"
        level = min(1.0, step / max(1.0, settings.curriculum_fraction * settings.steps))
        difficulty = shapes.Difficulty(level)
        indices = self.indices(modality, settings.batch_size)
        samples = [shapes.make_sample(shapes.TRAIN_SPLIT, i, difficulty) for i in indices]
        thinking = [self.rng.random() >= settings.no_thinking_fraction for _ in samples]
        return self.encode(samples, thinking), samples


def probe_accuracy(model: Glm4vForConditionalGeneration, processor: Glm4vProcessor,
                   samples: list[shapes.Sample]) -> float:
    """Greedy exact match on a small probe set (batched generate, images and videos apart)."""
    was_training = model.training
    model.eval()
    correct = 0
    for group in ([s for s in samples if s.video is None], [s for s in samples if s.video is not None]):
        if not group:
            continue
        batch = build_batch(processor, [s.messages() for s in group]).to(model.device)
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=80, do_sample=False,
                                    pad_token_id=processor.tokenizer.pad_token_id)
        texts = processor.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=False)
        correct += sum(parse_reply(t).final_answer == s.answer for t, s in zip(texts, group))
    model.train(was_training)
    return correct / len(samples)


def learning_rate_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def training_loss(
    model: Glm4vForConditionalGeneration, head: TokenHead, batch: BatchFeature,
    samples: list[shapes.Sample], aux_weight: float,
) -> torch.Tensor:
    """Language-model loss, plus the per-token object loss on the vision tower's output."""
    inputs = dict(batch)
    if "pixel_values" in inputs:
        modality, grid = "image", inputs["image_grid_thw"]
        encoded = model.model.get_image_features(inputs.pop("pixel_values"), grid)
    else:
        modality, grid = "video", inputs["video_grid_thw"]
        encoded = model.model.get_video_features(inputs.pop("pixel_values_videos"), grid)
    labels = batch_token_labels(samples, grid.cpu(), model.config.vision_config.spatial_merge_size)
    aux = head.loss(torch.cat(encoded.pooler_output), labels.to(model.device))
    # The features computed above go straight into the decoder: one vision pass per step.
    return model(**inputs, mm_encoder_outputs={modality: encoded}).loss + aux_weight * aux


def train(
    settings: TrainSettings,
    on_step: Callable[[TrainState], None] | None = None,
    probe_every: int = 250,
    probe_samples: int = 40,
) -> TrainResult:
    model, processor = build_untrained(settings.seed)
    model.to(settings.device).train()
    head = TokenHead(model.config.vision_config.out_hidden_size).to(settings.device)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.")] + list(head.parameters())
    text = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": text, "lr": settings.learning_rate},
            {"params": vision, "lr": settings.learning_rate * settings.vision_lr_scale},
        ],
        betas=(0.9, 0.98),
        weight_decay=settings.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_at(step, settings))
    batches = BatchMaker(processor, settings.seed)
    probe = shapes.make_samples("probe", probe_samples)

    probes: list[TrainState] = []
    started = time.perf_counter()
    for step in range(settings.steps):
        batch, samples = batches.train_batch(step, settings)
        loss = training_loss(model, head, batch.to(settings.device), samples, settings.aux_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        accuracy = None
        if probe_every and ((step + 1) % probe_every == 0 or step + 1 == settings.steps):
            accuracy = probe_accuracy(model, processor, probe)
        state = TrainState(step + 1, loss.item(), accuracy, time.perf_counter() - started)
        if accuracy is not None:
            probes.append(state)
        if on_step is not None:
            on_step(state)

    model.eval()
    return TrainResult(model.to("cpu"), processor, settings, probes, time.perf_counter() - started)


def train_and_save(out: Path, *, steps: int | None = None, batch_size: int | None = None, seed: int = 0,
                   device: str = "cpu", threads: int | None = None, overwrite: bool = False,
                   progress: Progress = SILENT) -> TrainResult:
    """``glm4v-edge tiny train``: the recipe (with the given overrides), then the checkpoint at ``out``."""
    check_output_folder(out, overwrite)  # before training, not after an hour of it
    if threads:
        torch.set_num_threads(threads)
    settings = TrainSettings(seed=seed, device=device)
    settings = replace(settings, steps=steps or settings.steps, batch_size=batch_size or settings.batch_size)
    progress.start("training", settings.steps)
    accuracy = "-"

    def on_step(state: TrainState) -> None:
        nonlocal accuracy
        if state.probe_accuracy is not None:
            accuracy = f"{state.probe_accuracy:.0%}"
        progress.step(f"loss {state.loss:.3f} · probe {accuracy}")

    result = train(settings, on_step=on_step)
    save_trained(result, out, overwrite=overwrite)
    return result


def save_trained(result: TrainResult, out: Path, overwrite: bool) -> Path:
    """The checkpoint plus training.json, written atomically."""
    tokenizer = result.processor.tokenizer
    return build.save_checkpoint(
        out, result.processor, result.model.config, build.build_generation_config(tokenizer),
        model=result.model, overwrite=overwrite, extra_json={"training.json": result.record()},
    )
