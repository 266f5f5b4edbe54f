"""onnxruntime's fused operators, as torch custom ops the exporter translates one to one.

Each op has a plain torch body (what it computes, used when the wrapper runs eagerly and by the
tests) and an ONNX translation to the operator onnxruntime-genai's model builder emits for the
same piece of a decoder:

- ``rms_norm``       -> ``SimplifiedLayerNormalization`` (RMSNorm in one kernel, fp32 inside)
- ``skip_rms_norm``  -> ``com.microsoft.SkipSimplifiedLayerNormalization`` (residual add + RMSNorm)
- ``rotary``         -> ``com.microsoft.RotaryEmbedding`` (interleaved, partial rotary)
- ``gqa``            -> ``com.microsoft.GroupQueryAttention`` (KV heads shared without copies,
                        causal, past and new keys joined inside the kernel)
- ``attention``      -> ``com.microsoft.MultiHeadAttention`` (the vision tower; onnxruntime's CPU
                        kernel runs it as flash attention, so memory grows linearly in patches)

Unfused, the exporter writes each of these as 5-20 small nodes, and attention as expand + transpose
+ two matmuls over ``heads x queries x keys`` scores; those nodes took 44 % of an unfused medium
decode step, the int4 matmuls the rest (benchmarks/results/decode-profile-medium-*.json).
"""

from __future__ import annotations

import math
from functools import cache

import onnx
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_schemas
from onnxscript import opset21 as op
from onnxscript.values import Opset

MSFT = Opset("com.microsoft", 1)
# (domain, op) -> how many of its outputs the graphs use. Only those are declared: the exporter
# gives a node every output its schema lists, and onnxruntime then rejects the types it guessed
# for unused optional ones (MultiHeadAttention's ``qk``).
FUSED_OPS = {("", "SimplifiedLayerNormalization"): 1, ("com.microsoft", "SkipSimplifiedLayerNormalization"): 4,
             ("com.microsoft", "RotaryEmbedding"): 1, ("com.microsoft", "GroupQueryAttention"): 3,
             ("com.microsoft", "MultiHeadAttention"): 1}
MASKED = -1e4  # additive bias for padding keys: finite, so a fully padded row never makes NaN (fp16-safe)


@cache
def register_schemas() -> None:
    """Teach onnx (hence onnxscript, which the exporter builds nodes with) the schemas onnxruntime
    defines for ``FUSED_OPS``: onnx knows only its own operators."""
    option = {"Single": onnx.defs.OpSchema.FormalParameterOption.Single,
              "Optional": onnx.defs.OpSchema.FormalParameterOption.Optional,
              "Variadic": onnx.defs.OpSchema.FormalParameterOption.Variadic}

    def parameters(formals):
        return [onnx.defs.OpSchema.FormalParameter(p.name, p.typeStr, param_option=option[p.option.name],
                                                   is_homogeneous=p.isHomogeneous) for p in formals]

    for schema in ort_schemas.get_all_operator_schema():
        used = FUSED_OPS.get((schema.domain, schema.name))
        if used is None or schema.since_version != 1:
            continue
        onnx.defs.register_schema(onnx.defs.OpSchema(
            schema.name, schema.domain, schema.since_version,
            inputs=parameters(schema.inputs), outputs=parameters(schema.outputs[:used]),
            type_constraints=[(c.type_param_str, c.allowed_type_strs, "") for c in schema.type_constraints],
            attributes=[onnx.defs.OpSchema.Attribute(a.name, onnx.defs.OpSchema.AttrType(a.type.value),
                                                     required=a.required) for a in schema.attributes.values()]))


# --- RMSNorm ---------------------------------------------------------------------------------


@torch.library.custom_op("glm4v_edge::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Glm4vRMSNorm: computed in fp32, scaled by ``weight``."""
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x)


def rms_norm_onnx(x, weight, eps: float):
    return op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)


@torch.library.custom_op("glm4v_edge::skip_rms_norm", mutates_args=())
def skip_rms_norm(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + skip), x + skip): a residual connection and the next norm in one."""
    total = x + skip
    return rms_norm(total, weight, eps), total


@skip_rms_norm.register_fake
def _(x, skip, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


def skip_rms_norm_onnx(x, skip, weight, eps: float):
    outputs = MSFT.SkipSimplifiedLayerNormalization(x, skip, weight, epsilon=eps)
    return outputs[0], outputs[3]


# --- rotary embedding ------------------------------------------------------------------------


@torch.library.custom_op("glm4v_edge::rotary", mutates_args=())
def rotary(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
           heads: int, rotary_dim: int) -> torch.Tensor:
    """GLM's interleaved rotary on the first ``rotary_dim`` dims of each head (partial rotary).

    ``x``: (batch, seq, heads * head_dim); ``cos_cache``/``sin_cache``: (rows, rotary_dim / 2), one
    value per rotated pair; ``position_ids``: (batch, seq) rows of the caches.
    """
    batch, seq, _ = x.shape
    heads_x = x.view(batch, seq, heads, -1)
    rotated, passed = heads_x[..., :rotary_dim], heads_x[..., rotary_dim:]
    even, odd = rotated[..., 0::2], rotated[..., 1::2]
    c, s = cos_cache[position_ids][:, :, None].to(x.dtype), sin_cache[position_ids][:, :, None].to(x.dtype)
    out = torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    return torch.cat((out, passed), dim=-1).reshape(batch, seq, -1)


@rotary.register_fake
def _(x, position_ids, cos_cache, sin_cache, heads, rotary_dim):
    return torch.empty_like(x)


def rotary_onnx(x, position_ids, cos_cache, sin_cache, heads: int, rotary_dim: int):
    return MSFT.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=1, num_heads=heads,
                                rotary_embedding_dim=rotary_dim)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M-RoPE's per-token angles (batch, seq, rotary_dim / 2) as ``rotary``'s inputs: every
    (batch, token) gets its own cache row and position id, which keeps the mix of the three
    position axes that a cache indexed by one position could not."""
    batch, seq, half = cos.shape
    ids = torch.arange(batch * seq, device=cos.device).view(batch, seq)
    return ids, cos.reshape(batch * seq, half), sin.reshape(batch * seq, half)


# --- decoder attention -----------------------------------------------------------------------


@torch.library.custom_op("glm4v_edge::gqa", mutates_args=())
def gqa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
        past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
        attention_bias: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query attention with a key/value cache, as GroupQueryAttention computes it
    when every row holds all past + new positions (``seqlens_k`` = total - 1).

    ``query``: (batch, seq, heads * head_dim); ``key``/``value``: (batch, seq, kv_heads * head_dim);
    ``past_*``: (batch, kv_heads, past, head_dim); ``attention_bias``: (batch, 1, seq, total), added
    to the scores (padding). Returns (output (batch, seq, heads * head_dim), present key, present value).
    """
    batch, seq, _ = query.shape
    head_dim = past_key.shape[-1]
    q = query.view(batch, seq, heads, head_dim).transpose(1, 2)
    k = torch.cat((past_key, key.view(batch, seq, kv_heads, head_dim).transpose(1, 2)), dim=2)
    v = torch.cat((past_value, value.view(batch, seq, kv_heads, head_dim).transpose(1, 2)), dim=2)
    total = k.shape[2]
    groups = heads // kv_heads
    scores = q @ k.repeat_interleave(groups, dim=1).transpose(2, 3) / math.sqrt(head_dim)
    causal = torch.ones(seq, total, dtype=torch.bool, device=query.device).tril(total - seq)
    scores = scores.float().masked_fill(~causal, float("-inf")) + attention_bias.float()
    probs = scores.softmax(-1).to(v.dtype)
    out = (probs @ v.repeat_interleave(groups, dim=1)).transpose(1, 2).reshape(batch, seq, -1)
    return out, k, v


@gqa.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, attention_bias, heads, kv_heads):
    batch, seq, _ = query.shape
    present = past_key.new_empty(batch, kv_heads, past_key.shape[2] + seq, past_key.shape[3])
    return torch.empty_like(query), present, torch.empty_like(present)


def gqa_onnx(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, attention_bias,
             heads: int, kv_heads: int):
    outputs = MSFT.GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
                                       None, None, None, attention_bias, num_heads=heads, kv_num_heads=kv_heads)
    return outputs[0], outputs[1], outputs[2]


def gqa_lengths_and_bias(attention_mask: torch.Tensor, seq: int,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``gqa``'s shared inputs from the (batch, past + seq) mask: every row holds all positions
    (``seqlens_k`` = total - 1, int32) and left padding is masked by an additive bias (batch, 1,
    seq, total), finite so a fully padded row never makes NaN (and fp16-safe)."""
    batch, total = attention_mask.shape
    seqlens = torch.full((batch,), total - 1, dtype=torch.int32, device=attention_mask.device)
    total_length = torch.full((), total, dtype=torch.int32, device=attention_mask.device)
    bias = (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASKED
    return seqlens, total_length, bias.expand(batch, 1, seq, total)


# --- vision attention ------------------------------------------------------------------------


@torch.library.custom_op("glm4v_edge::attention", mutates_args=())
def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Full (non-causal) multi-head attention of one sequence: (batch, seq, heads * head_dim) each."""
    batch, seq, width = query.shape
    q, k, v = (t.view(batch, seq, heads, width // heads).transpose(1, 2) for t in (query, key, value))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, seq, width)


@attention.register_fake
def _(query, key, value, heads):
    return torch.empty_like(query)


def attention_onnx(query, key, value, heads: int):
    return MSFT.MultiHeadAttention(query, key, value, num_heads=heads)


TRANSLATIONS = {
    torch.ops.glm4v_edge.rms_norm.default: rms_norm_onnx,
    torch.ops.glm4v_edge.skip_rms_norm.default: skip_rms_norm_onnx,
    torch.ops.glm4v_edge.rotary.default: rotary_onnx,
    torch.ops.glm4v_edge.gqa.default: gqa_onnx,
    torch.ops.glm4v_edge.attention.default: attention_onnx,
}
