"""The host-side M-RoPE positions of the ONNX decoder equal transformers' own computation."""

from __future__ import annotations

import numpy as np
import pytest

from glm4v_edge import shapes
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.positions import rope_positions


@pytest.mark.parametrize("indices", [[0, 2], [3, 8], [4, 9], [1]])  # images (padded), two images, videos
def test_rope_positions_match_get_rope_index(tiny_variant, indices):
    samples = [shapes.make_sample("heldout", i) for i in indices]
    batch = build_batch(tiny_variant.processor, [s.messages() for s in samples])
    theirs, _ = tiny_variant.model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], batch.get("image_grid_thw"),
        batch.get("video_grid_thw"), batch["attention_mask"],
    )
    as_numpy = {k: (v.numpy() if v is not None else None) for k, v in batch.items()}
    ours, next_position = rope_positions(
        as_numpy["input_ids"], as_numpy["attention_mask"], as_numpy["mm_token_type_ids"],
        as_numpy.get("image_grid_thw"), as_numpy.get("video_grid_thw"), 2,
    )
    mask = as_numpy["attention_mask"].astype(bool)
    np.testing.assert_array_equal(ours[:, mask], theirs.numpy()[:, mask])
    np.testing.assert_array_equal(next_position, theirs.numpy().max(axis=(0, 2)) + 1)
