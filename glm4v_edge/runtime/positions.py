"""Host-side position inputs the ONNX graphs take instead of computing them.

Ported to numpy from transformers' GLM-4.1V (``Glm4vModel.get_rope_index`` and
``transformers.vision_utils.get_vision_position_ids``), so the exported graphs stay free of
data-dependent loops and the ONNX runtime needs no torch.
"""

from __future__ import annotations

import itertools

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2  # the processor's mm_token_type_ids


def vision_patch_positions(grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
    """(h, w) of every patch of one grid (t, h, w), in the merge-block-major order the
    processor lays patches out in: shape (t*h*w, 2)."""
    t, h, w = (int(x) for x in grid_thw)
    m = spatial_merge_size
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // m, m, w // m, m)
    hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)).astype(np.int64)


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
