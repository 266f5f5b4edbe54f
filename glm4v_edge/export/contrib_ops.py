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
+ two matmuls over ``heads x queries x keys`` scores; per decode step those nodes cost more than
the int4 matmuls themselves (measured in benchmarks/results/decode-profile-*.json).
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
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, rotary_dim: int) -> torch.Tensor:
    """GLM's interleaved rotary on the first ``rotary_dim`` dims of each head (partial rotary).

    ``x``: (batch, seq, heads * head_dim); ``cos``/``sin``: (batch, seq, rotary_dim / 2), one value
    per rotated pair and token: M-RoPE's three position axes are already mixed in by the caller.
    """
    batch, seq, _ = x.shape
    half = rotary_dim // 2
    heads_x = x.view(batch, seq, heads, -1)
    rotated, passed = heads_x[..., :2 * half], heads_x[..., 2 * half:]
    even, odd = rotated[..., 0::2], rotated[..., 1::2]
    c, s = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    out = torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    return torch.cat((out, passed), dim=-1).reshape(batch, seq, -1)


@rotary.register_fake
def _(x, cos, sin, heads, rotary_dim):
    return torch.empty_like(x)


def rotary_onnx(x, cos, sin, heads: int, rotary_dim: int):
    # onnxruntime looks cos/sin up by position id; giving every (batch, token) its own row of the
    # cache and id keeps M-RoPE's per-token mix of the three axes.
    shape = op.Shape(cos)
    rows = op.Mul(op.Gather(shape, 0), op.Gather(shape, 1))
    half = op.Gather(shape, 2, axis=0)
    table_shape = op.Concat(op.Unsqueeze(rows, [0]), op.Unsqueeze(half, [0]), axis=0)
    ids = op.Reshape(op.Range(op.Constant(value_int=0), rows, op.Constant(value_int=1)), op.Slice(shape, [0], [2]))
    cos_table, sin_table = op.Reshape(cos, table_shape), op.Reshape(sin, table_shape)
    return MSFT.RotaryEmbedding(x, ids, op.CastLike(cos_table, x), op.CastLike(sin_table, x),
                                interleaved=1, num_heads=heads, rotary_embedding_dim=rotary_dim)


# --- decoder attention -----------------------------------------------------------------------


@torch.library.custom_op("glm4v_edge::gqa", mutates_args=())
def gqa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
        past_value: torch.Tensor, attention_mask: torch.Tensor, heads: int,
        kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query attention with a key/value cache.

    ``query``: (batch, seq, heads * head_dim); ``key``/``value``: (batch, seq, kv_heads * head_dim);
    ``past_*``: (batch, kv_heads, past, head_dim); ``attention_mask``: (batch, past + seq), 0 for
    padding. Returns (output (batch, seq, heads * head_dim), present key, present value).
    """
    batch, seq, _ = query.shape
    head_dim = past_key.shape[-1]
    q = query.view(batch, seq, heads, head_dim).transpose(1, 2)
    k = torch.cat((past_key, key.view(batch, seq, kv_heads, head_dim).transpose(1, 2)), dim=2)
    v = torch.cat((past_value, value.view(batch, seq, kv_heads, head_dim).transpose(1, 2)), dim=2)
    total = k.shape[2]
    groups = heads // kv_heads
    scores = q @ k.repeat_interleave(groups, dim=1).transpose(2, 3) / math.sqrt(head_dim)
    causal = torch.ones(seq, total, dtype=torch.bool).tril(total - seq)
    keep = causal[None, None] & attention_mask[:, None, None, :].bool()
    scores = scores.float() + torch.where(keep, 0.0, MASKED)
    probs = scores.softmax(-1).to(v.dtype)
    out = (probs @ v.repeat_interleave(groups, dim=1)).transpose(1, 2).reshape(batch, seq, -1)
    return out, k, v


@gqa.register_fake
def _(query, key, value, past_key, past_value, attention_mask, heads, kv_heads):
    batch, seq, _ = query.shape
    present = past_key.new_empty(batch, kv_heads, past_key.shape[2] + seq, past_key.shape[3])
    return torch.empty_like(query), present, torch.empty_like(present)


def gqa_onnx(query, key, value, past_key, past_value, attention_mask, heads: int, kv_heads: int):
    # Every row holds all past + new positions (seqlens_k = total - 1); left padding is masked by
    # an additive bias, which GroupQueryAttention adds to the causal scores.
    mask_shape = op.Shape(attention_mask)
    total = op.Gather(mask_shape, 1)
    seqlens = op.Cast(op.Sub(op.ReduceSum(op.CastLike(op.Expand(op.Constant(value_int=1), mask_shape), total),
                                          [1], keepdims=0), op.Constant(value_int=1)), to=6)
    total32 = op.Cast(total, to=6)
    padding = op.Sub(op.Constant(value_float=1.0), op.CastLike(attention_mask, op.Constant(value_float=1.0)))
    bias = op.Unsqueeze(op.Mul(padding, op.Constant(value_float=MASKED)), [1, 2])  # (batch, 1, 1, total)
    queries = op.Slice(op.Shape(query), [1], [2])
    bias_shape = op.Concat(op.Slice(mask_shape, [0], [1]), op.Constant(value_ints=[1]), queries,
                           op.Slice(mask_shape, [1], [2]), axis=0)
    bias = op.CastLike(op.Expand(bias, bias_shape), query)  # GroupQueryAttention wants (batch, 1, seq, total)
    outputs = MSFT.GroupQueryAttention(query, key, value, past_key, past_value, seqlens, total32, None, None,
                                       None, bias, num_heads=heads, kv_num_heads=kv_heads)
    return outputs[0], outputs[1], outputs[2]


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
