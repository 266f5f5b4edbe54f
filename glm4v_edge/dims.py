"""Sizes read from a GLM-4.1V config (no torch): the cache shape, the context, the merge."""

from __future__ import annotations


def head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of the decoder's cache."""
    return config.text_config.num_key_value_heads, head_dim(config.text_config)


def context_length(config) -> int:
    return config.text_config.max_position_embeddings


def merge_size(config) -> int:
    """Patches per side merged into one image token."""
    return config.vision_config.spatial_merge_size
