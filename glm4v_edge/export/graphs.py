"""The three ONNX graphs, as thin torch wrappers around transformers' GLM-4.1V modules.

Names and inputs follow onnx-community's VLM exports (Qwen2-VL, SmolVLM):
``vision_encoder``, ``embed_tokens`` and ``decoder_model_merged`` (one decoder for prefill and
decode, past length 0 on the first call). What needs data-dependent loops stays on the host
(``glm4v_edge.runtime.positions``): M-RoPE position ids and the vision patches' (h, w).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers import DynamicCache, Glm4vForConditionalGeneration
from transformers.vision_utils import get_vision_position_ids

from glm4v_edge.dims import kv_shape
from glm4v_edge.names import (
    DECODER_INPUTS,
    EMBED_INPUT,
    EMBED_OUTPUT,
    LOGITS,
    PAST,
    PRESENT,
    VISION_INPUTS,
    VISION_OUTPUT,
    kv_names,
)

OPSET = 21  # int4 types (MatMulNBits, GatherBlockQuantized) need 21; GridSample "cubic" naming


class VisionEncoder(torch.nn.Module):
    """Patches of ONE image or video frame pair -> merged features (the merger's output).

    transformers runs separate attention per frame with a Python loop over segments, which an
    exported graph would freeze to the example's count; one segment per call keeps every size
    dynamic. A video of T frame pairs is T calls.
    """

    def __init__(self, model: Glm4vForConditionalGeneration):
        super().__init__()
        self.visual = model.model.visual

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # [0, patches] from tensor ops: a Python int here would be frozen into the graph.
        patches = torch.ones_like(pixel_values[:, 0], dtype=torch.int32).sum(0, keepdim=True)
        cu_seqlens = torch.nn.functional.pad(patches, (1, 0))
        return self.visual(
            pixel_values.to(self.visual.dtype), grid_thw, position_ids=position_ids, cu_seqlens=cu_seqlens
        ).pooler_output


class EmbedTokens(torch.nn.Module):
    def __init__(self, model: Glm4vForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class Decoder(torch.nn.Module):
    """inputs_embeds + mask + 3D positions + past key/values -> logits + present key/values.

    ``num_logits_to_keep`` (>= 1) returns only the last positions' logits, so a long prefill
    never materialises (sequence, vocab) logits.
    """

    def __init__(self, model: Glm4vForConditionalGeneration):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.layers = model.config.text_config.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, num_logits_to_keep, past_key_values):
        cache = DynamicCache(config=self.language_model.config)
        for layer in range(self.layers):
            cache.update(past_key_values[2 * layer], past_key_values[2 * layer + 1], layer)
        hidden = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True,
        ).last_hidden_state
        logits = self.lm_head(hidden[:, hidden.shape[1] - num_logits_to_keep:])
        presents = [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]
        return (logits, *presents)


@dataclass
class GraphSpec:
    """One graph's wrapper module and what ``torch.onnx.export`` needs to trace it."""

    module: torch.nn.Module
    args: tuple
    dynamic_shapes: tuple
    input_names: list[str]
    output_names: list[str]

    def export(self, **options) -> torch.onnx.ONNXProgram:
        """``torch.onnx.export(dynamo=True)`` at this project's opset (``options``: e.g. optimize)."""
        with warnings.catch_warnings():
            # Dims shared by several inputs are reported once per input; nothing to act on.
            warnings.filterwarnings("ignore", message="# The axis name")
            return torch.onnx.export(
                self.module.eval(), self.args, dynamo=True, opset_version=OPSET, verbose=False,
                dynamic_shapes=self.dynamic_shapes, input_names=self.input_names, output_names=self.output_names,
                **options)


def vision_encoder_spec(model: Glm4vForConditionalGeneration) -> GraphSpec:
    vision = model.config.vision_config
    grid = torch.tensor([[1, 4 * vision.spatial_merge_size, 6 * vision.spatial_merge_size]])
    patches = int(grid.prod())
    features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixel_values = torch.randn(patches, features, dtype=torch.float32)
    position_ids = get_vision_position_ids(grid, vision.spatial_merge_size)
    n = torch.export.Dim("patches")
    return GraphSpec(VisionEncoder(model), (pixel_values, grid, position_ids), ({0: n}, None, {0: n}),
                     list(VISION_INPUTS), [VISION_OUTPUT])


def embed_tokens_spec(model: Glm4vForConditionalGeneration) -> GraphSpec:
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return GraphSpec(EmbedTokens(model), (ids,), ({0: batch, 1: sequence},), [EMBED_INPUT], [EMBED_OUTPUT])


def decoder_spec(model: Glm4vForConditionalGeneration) -> GraphSpec:
    layers = model.config.text_config.num_hidden_layers
    heads, head_dim = kv_shape(model.config)
    dtype = model.dtype
    batch, sequence, past = 2, 5, 3  # all > 1 so no dimension is specialised
    embeds = torch.randn(batch, sequence, model.config.text_config.hidden_size, dtype=dtype)
    mask = torch.ones(batch, past + sequence, dtype=torch.int64)
    positions = torch.arange(past, past + sequence).view(1, 1, -1).expand(3, batch, -1).contiguous()
    cache = tuple(torch.randn(batch, heads, past, head_dim, dtype=dtype) for _ in range(2 * layers))
    b, s, p, total = (torch.export.Dim(name) for name in ("batch", "sequence", "past_sequence", "total_sequence"))
    return GraphSpec(
        Decoder(model), (embeds, mask, positions, torch.tensor(1), cache),
        ({0: b, 1: s}, {0: b, 1: total}, {1: b, 2: s}, None, tuple({0: b, 2: p} for _ in cache)),
        [*DECODER_INPUTS, *kv_names(layers, PAST)], [LOGITS, *kv_names(layers, PRESENT)],
    )


SPECS = {"vision_encoder": vision_encoder_spec, "embed_tokens": embed_tokens_spec,
         "decoder_model_merged": decoder_spec}
