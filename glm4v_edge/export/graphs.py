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
from transformers import AttentionInterface, Glm4vForConditionalGeneration
from transformers.vision_utils import get_vision_position_ids

from glm4v_edge.dims import kv_shape
from glm4v_edge.export import contrib_ops
from glm4v_edge.export.contrib_ops import cached_attention, padding_bias, rms_norm, rotary, rotary_tables, skip_rms_norm
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
FUSED_ATTENTION = "glm4v_edge_fused"


def fused_attention(module, query, key, value, attention_mask, scaling, **kwargs):
    """transformers' attention interface for the vision tower, as one MultiHeadAttention node
    (``contrib_ops.attention``): (1, heads, patches, head_dim) in, (1, patches, heads, head_dim) out."""
    if attention_mask is not None or scaling != query.shape[-1] ** -0.5:
        raise ValueError("the fused vision attention takes no mask and the default scale")
    batch, heads, seq, head_dim = query.shape
    flat = [t.transpose(1, 2).reshape(batch, seq, heads * head_dim) for t in (query, key, value)]
    return contrib_ops.attention(*flat, heads).view(batch, seq, heads, head_dim), None


AttentionInterface.register(FUSED_ATTENTION, fused_attention)


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
        config = self.visual.config
        chosen, config._attn_implementation = config._attn_implementation, FUSED_ATTENTION
        try:
            return self.visual(
                pixel_values.to(self.visual.dtype), grid_thw, position_ids=position_ids, cu_seqlens=cu_seqlens
            ).pooler_output
        finally:
            config._attn_implementation = chosen


class EmbedTokens(torch.nn.Module):
    def __init__(self, model: Glm4vForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class Decoder(torch.nn.Module):
    """inputs_embeds + mask + 3D positions + key/value cache -> logits + the cache written.

    The cache (batch, kv_heads, room, head_dim) per layer is preallocated by the caller with room
    for the past and the new positions; the first ``past`` hold the past (``past`` = the mask's
    length - the new positions), the new ones are written after them and the present is the same
    buffer (bound as both, nothing is copied).

    transformers' Glm4vTextModel layer by layer, on its own modules and weights, with the pieces
    onnxruntime has fused kernels for written as ``contrib_ops`` (RMSNorm, residual + RMSNorm,
    rotary, grouped-query attention with the cache). ``num_logits_to_keep`` (>= 1) returns only
    the last positions' logits, so a long prefill never materialises (sequence, vocab) logits.
    """

    def __init__(self, model: Glm4vForConditionalGeneration):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        text = model.config.text_config
        self.heads, self.kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.rotary_dim = int(self.head_dim * text.rope_parameters.get("partial_rotary_factor", 1.0))

    def forward(self, inputs_embeds, attention_mask, position_ids, num_logits_to_keep, past_key_values):
        model = self.language_model
        # Computed once for every layer: rotary tables (transformers gives each pair's angle
        # twice, one value per rotated pair is kept) and the padding bias.
        cos, sin = (t[..., 0::2] for t in model.rotary_emb(inputs_embeds, position_ids))
        rotary_ids, cos_cache, sin_cache = rotary_tables(cos, sin)
        bias = padding_bias(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
        layers = model.layers
        first = layers[0].input_layernorm
        hidden, residual = rms_norm(inputs_embeds, first.weight, first.variance_epsilon), inputs_embeds
        presents = []
        for index, layer in enumerate(layers):
            attn = layer.self_attn
            query = rotary(attn.q_proj(hidden), rotary_ids, cos_cache, sin_cache, self.heads, self.rotary_dim)
            key = rotary(attn.k_proj(hidden), rotary_ids, cos_cache, sin_cache, self.kv_heads, self.rotary_dim)
            past_key, past_value = past_key_values[2 * index], past_key_values[2 * index + 1]
            out, key, value = cached_attention(query, key, attn.v_proj(hidden), past_key, past_value, bias,
                                               self.heads, self.kv_heads, self.head_dim)
            presents += [key, value]
            hidden, residual = self._residual_norm(attn.o_proj(out), layer.post_self_attn_layernorm,
                                                   residual, layer.post_attention_layernorm)
            following = layers[index + 1].input_layernorm if index + 1 < len(layers) else model.norm
            hidden, residual = self._residual_norm(layer.mlp(hidden), layer.post_mlp_layernorm, residual, following)
        logits = self.lm_head(hidden[:, hidden.shape[1] - num_logits_to_keep:])
        return (logits, *presents)

    @staticmethod
    def _residual_norm(branch, branch_norm, residual, next_norm):
        """GLM's sandwich norm: residual + norm(branch), then the next block's input norm."""
        normed = rms_norm(branch, branch_norm.weight, branch_norm.variance_epsilon)
        return skip_rms_norm(normed, residual, next_norm.weight, next_norm.variance_epsilon)


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
        contrib_ops.register_schemas()
        with warnings.catch_warnings():
            # Dims shared by several inputs are reported once per input; nothing to act on.
            warnings.filterwarnings("ignore", message="# The axis name")
            return torch.onnx.export(
                self.module.eval(), self.args, dynamo=True, opset_version=OPSET, verbose=False,
                dynamic_shapes=self.dynamic_shapes, input_names=self.input_names, output_names=self.output_names,
                custom_translation_table=contrib_ops.TRANSLATIONS, **options)


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
    batch, sequence, past, room = 2, 5, 3, 10  # all > 1 and distinct, so no dimension is specialised
    embeds = torch.randn(batch, sequence, model.config.text_config.hidden_size, dtype=dtype)
    mask = torch.ones(batch, past + sequence, dtype=torch.int64)
    positions = torch.arange(past, past + sequence).view(1, 1, -1).expand(3, batch, -1).contiguous()
    cache = tuple(torch.randn(batch, heads, room, head_dim, dtype=dtype) for _ in range(2 * layers))
    b, s, p, total = (torch.export.Dim(name) for name in ("batch", "sequence", "cache_sequence", "total_sequence"))
    return GraphSpec(
        Decoder(model), (embeds, mask, positions, torch.tensor(1), cache),
        ({0: b, 1: s}, {0: b, 1: total}, {1: b, 2: s}, None, tuple({0: b, 2: p} for _ in cache)),
        [*DECODER_INPUTS, *kv_names(layers, PAST)], [LOGITS, *kv_names(layers, PRESENT)],
    )


SPECS = {"vision_encoder": vision_encoder_spec, "embed_tokens": embed_tokens_spec,
         "decoder_model_merged": decoder_spec}
