"""Per-token object labels for the auxiliary loss that teaches the tiny vision tower to see.

A ViT this small, trained from scratch, learns shapes and motion slowly from the language
loss alone. While training, a throwaway linear head also predicts, for every merged image
or video token, the kind and colour of the shape covering it and, in a video, which way
that shape moves (the vision tower sees frame pairs, so motion is visible in one token).
It is dense, cheap supervision; the head is dropped and the checkpoint is the plain
architecture.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from glm4v_edge import shapes

BACKGROUND = 0  # class 0 of every head: no shape here (or, for motion, no motion)
MIN_COVERAGE = 0.15  # share of a token's area a shape must cover to label it


class TokenHead(nn.Module):
    """Linear read-outs of kind, colour and motion from the merger's output tokens."""

    def __init__(self, hidden: int):
        super().__init__()
        self.kind = nn.Linear(hidden, len(shapes.SHAPES) + 1)
        self.color = nn.Linear(hidden, len(shapes.COLORS) + 1)
        self.motion = nn.Linear(hidden, len(shapes.DIRECTIONS) + 1)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels``: (tokens, 3) = kind, colour, motion classes."""
        heads = (self.kind, self.color, self.motion)
        return sum(nn.functional.cross_entropy(head(features), labels[:, i]) for i, head in enumerate(heads))


def token_labels(
    size: tuple[int, int], frames: list[list[shapes.DrawnShape]], merged_h: int, merged_w: int, motion: int
) -> np.ndarray:
    """(merged_h * merged_w, 3) labels in the processor's row-major token order.

    ``frames`` are the layouts the token sees (one for an image, a pair for a video); the
    same index in each layout is the same shape. ``motion`` labels every covered token.
    """
    masks = [shapes.object_mask(size, layout) for layout in frames]
    mask = np.maximum.reduce(masks)  # where any frame of the token shows the shape
    drawn = frames[0]
    height, width = mask.shape
    rows = np.linspace(0, height, merged_h + 1).round().astype(int)
    cols = np.linspace(0, width, merged_w + 1).round().astype(int)
    classes = np.array(
        [[BACKGROUND] * 3]
        + [[shapes.SHAPES.index(s.kind) + 1, list(shapes.COLORS).index(s.color) + 1, motion] for s in drawn]
    )
    labels = np.zeros((merged_h * merged_w, 3), dtype=np.int64)
    for i in range(merged_h):
        for j in range(merged_w):
            cell = mask[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            counts = np.bincount(cell.ravel(), minlength=len(drawn) + 1)
            counts[BACKGROUND] = 0
            best = int(counts.argmax())
            if counts[best] >= MIN_COVERAGE * cell.size:
                labels[i * merged_w + j] = classes[best]
    return labels


def batch_token_labels(samples: list[shapes.Sample], grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Labels for every vision token of a batch, in the order the vision tower emits them."""
    labels = []
    for sample, (grid_t, grid_h, grid_w) in zip(_media(samples), grid_thw.tolist()):
        size, layouts, motion = sample
        pairs = [layouts] if grid_t == 1 and len(layouts) == 1 else [layouts[2 * t:2 * t + 2] for t in range(grid_t)]
        labels += [token_labels(size, pair, grid_h // merge, grid_w // merge, motion) for pair in pairs]
    return torch.from_numpy(np.concatenate(labels))


def _media(samples: list[shapes.Sample]):
    """(size, layouts, motion class) per image, or per video, in batch order."""
    for sample in samples:
        if sample.video is not None:
            frames = sample.video.frames
            motion = shapes.DIRECTIONS.index(sample.answer) + 1 if sample.qtype == "motion" else BACKGROUND
            yield (frames.shape[2], frames.shape[1]), sample.layouts, motion
        else:
            for image, layout in zip(sample.images, sample.layouts):
                yield image.size, [layout], BACKGROUND
