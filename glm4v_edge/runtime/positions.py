"""M-RoPE position ids, computed on the host for the ONNX decoder instead of inside it.

Ported to numpy from transformers' GLM-4.1V (``Glm4vModel.get_rope_index``, a method of the
torch model), so the exported graph stays free of data-dependent loops. The vision patches'
(h, w) come from transformers' own ``get_vision_position_ids``.
"""

from __future__ import annotations

import itertools

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2  # the processor's mm_token_type_ids


def _vision_token_positions(start: int, grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
    """3D (t, h, w) positions of one image's (or video frame's) merged tokens: shape (3, n)."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt, hh, ww]).reshape(3, -1) + start


def rope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    mm_token_type_ids: np.ndarray | None,
    image_grid_thw: np.ndarray | None,
    video_grid_thw: np.ndarray | None,
    spatial_merge_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE position ids (3, batch, seq) of a left-padded prompt, and each row's next position.

    Text advances all three rows by one per token; an image's tokens take (t, h, w) grid
    positions and the text after it resumes at the largest of them plus one. Each video frame
    pair is its own grid (GLM-4.1V separates frames with timestamps). Padding gets position 1,
    as transformers' generate gives it.
    """
    batch, length = input_ids.shape
    positions = np.ones((3, batch, length), dtype=np.int64)
    next_position = np.zeros(batch, dtype=np.int64)
    types = np.zeros_like(input_ids) if mm_token_type_ids is None else np.asarray(mm_token_type_ids)
    frames = []
    if video_grid_thw is not None:
        for t, h, w in np.asarray(video_grid_thw):
            frames += [np.array([1, h, w])] * int(t)
    grids = {
        IMAGE: iter(np.asarray(image_grid_thw)) if image_grid_thw is not None else iter(()),
        VIDEO: iter(frames),
    }
    for row in range(batch):
        keep = np.asarray(attention_mask[row]).astype(bool)
        row_types = types[row][keep]
        pieces, current = [], 0
        for kind, group in itertools.groupby(row_types.tolist()):
            count = len(list(group))
            if kind == TEXT:
                pieces.append(np.arange(count)[None, :].repeat(3, axis=0) + current)
                current += count
            else:
                grid = next(grids[kind])
                pieces.append(_vision_token_positions(current, grid, spatial_merge_size))
                current += max(int(grid[1]), int(grid[2])) // spatial_merge_size
        row_positions = np.concatenate(pieces, axis=1)
        positions[:, row, keep] = row_positions
        next_position[row] = row_positions.max() + 1
    return positions, next_position
