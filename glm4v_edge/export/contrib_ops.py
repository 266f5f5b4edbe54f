"""onnxruntime's fused operators, as torch custom ops the exporter translates.

Each op has a plain torch body (what it computes, used when the wrapper runs eagerly and by the
tests) and an ONNX translation to the operator onnxruntime-genai's model builder emits for the
same piece of a decoder:

- ``rms_norm``       -> ``SimplifiedLayerNormalization`` (RMSNorm in one kernel, fp32 inside)
- ``skip_rms_norm``  -> ``com.microsoft.SkipSimplifiedLayerNormalization`` (residual add + RMSNorm)
- ``rotary``         -> ``com.microsoft.RotaryEmbedding`` (interleaved, partial rotary)
- ``cached_attention`` -> ``ScatterND`` writes the new positions into the preallocated cache, then
                        an ``If``: for a prefill ``com.microsoft.GroupQueryAttention``, for one
                        decode token one matrix product per key/value head for all the query
                        heads that share it (the builder uses GroupQueryAttention for both)
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
import onnx_ir as ir
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
             ("com.microsoft", "MultiHeadAttention"): 1,
             ("com.microsoft", "FusedMatMul"): 1}
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


@torch.library.custom_op("glm4v_edge::cached_attention", mutates_args=())
def cached_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                     value_cache: torch.Tensor, attention_bias: torch.Tensor, heads: int, kv_heads: int,
                     head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query attention over a preallocated key/value cache.

    ``query``: (batch, seq, heads * head_dim); ``key``/``value``: (batch, seq, kv_heads * head_dim);
    ``*_cache``: (batch, kv_heads, room, head_dim) whose first ``total - seq`` positions are the
    past, ``total`` being ``attention_bias``' last dim; ``attention_bias``: (batch, 1, seq, total),
    added to the scores (padding). The new keys and values are written at positions
    ``total - seq .. total`` and the query attends to the first ``total``. Returns (output
    (batch, seq, heads * head_dim), key cache, value cache), the caches with the new positions.
    """
    batch, seq, _ = query.shape
    total = attention_bias.shape[-1]
    caches = []
    for past, new in ((key_cache, key), (value_cache, value)):
        written = past.clone()
        written[:, :, total - seq:total] = new.view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        caches.append(written)
    k, v = (written[:, :, :total] for written in caches)
    groups = heads // kv_heads
    q = query.view(batch, seq, kv_heads, groups, head_dim).transpose(1, 2)  # (batch, kv, seq, groups, dim)
    scores = torch.einsum("bhsgd,bhtd->bhsgt", q, k) / math.sqrt(head_dim)
    causal = torch.ones(seq, total, dtype=torch.bool, device=query.device).tril(total - seq)
    bias = attention_bias.float()[:, :, :, None] + torch.where(causal, 0.0, MASKED)[None, None, :, None]
    probs = (scores.float() + bias).softmax(-1).to(v.dtype)
    out = torch.einsum("bhsgt,bhtd->bshgd", probs, v).reshape(batch, seq, -1)
    return out, caches[0], caches[1]


@cached_attention.register_fake
def _(query, key, value, key_cache, value_cache, attention_bias, heads, kv_heads, head_dim):
    return torch.empty_like(query), torch.empty_like(key_cache), torch.empty_like(value_cache)


def cached_attention_onnx(query, key, value, key_cache, value_cache, attention_bias, heads: int, kv_heads: int,
                          head_dim: int):
    """``cached_attention`` in onnx: ScatterND writes the new positions into the cache (bound as
    both past and present, it writes only them: onnxruntime skips the copy when input and output
    share a buffer), then an ``If`` on the number of new positions picks the attention kernel.

    One new token (decode): each key/value head is read once for all the query heads that share
    it, its 16 queries one (16, head_dim) matrix, so both products are matrix multiplications.
    onnxruntime's CPU GroupQueryAttention loops over the query heads instead and reads each
    key/value head once per query head: at the 9B's 807 positions one layer's decode attention
    took 1.0 ms against 0.4-0.6 ms, at 4096 positions 4.9 against 1.9 ms.
    Several (prefill): GroupQueryAttention, whose kernel applies the causal mask and softmax in
    one pass; the same products in plain operators took 1.5x longer there (132-170 ms against 90
    at 807 tokens), materialising every score twice.
    """
    # Sizes from the bias, which every layer shares: the index and the If's condition are then the
    # same expressions in every layer, computed once (onnxruntime merges common subexpressions).
    batch, seq, total = (op.Shape(attention_bias, start=axis, end=axis + 1) for axis in (0, 2, 3))
    # (batch, kv, seq, 3) indices of the new positions: (row, head, past + i)
    index_shape = op.Concat(batch, _ints(kv_heads), seq, _ints(1), axis=0)
    rows = op.Reshape(_range(0, batch), _ints(-1, 1, 1, 1))
    kv = op.Reshape(_range(0, _ints(kv_heads)), _ints(1, -1, 1, 1))
    positions = op.Reshape(_range(op.Sub(total, seq), total), _ints(1, 1, -1, 1))
    index = op.Concat(*(op.Expand(part, index_shape) for part in (rows, kv, positions)), axis=-1)

    def heads_first(x):  # (batch, seq, kv * head_dim) -> (batch, kv, seq, head_dim)
        return op.Transpose(op.Reshape(x, _ints(0, 0, kv_heads, head_dim)), perm=[0, 2, 1, 3])

    layer = key_cache.name  # names the branches' nodes: the profiler tells them apart by name
    key_cache = op.ScatterND(key_cache, index, heads_first(key))
    value_cache = op.ScatterND(value_cache, index, heads_first(value))
    one_token = op.Squeeze(op.Equal(seq, _ints(1)))
    out = op.If(one_token,
                then_branch=_grouped_decode_attention(query, key_cache, value_cache, attention_bias, total,
                                                      heads, kv_heads, head_dim, layer),
                else_branch=_group_query_attention(query, key, value, key_cache, value_cache, attention_bias,
                                                   heads, kv_heads, layer))
    return out, key_cache, value_cache


def _grouped_decode_attention(query, key_cache, value_cache, attention_bias, total, heads: int, kv_heads: int,
                              head_dim: int, layer: str) -> ir.Graph:
    """The ``If`` branch for one new token: (batch, 1, heads * head_dim) out. Query heads
    ``h * groups .. (h + 1) * groups`` use key/value head ``h``: (batch, kv, groups, head_dim).

    It reads the whole preallocated cache in place, its unwritten positions masked (the runtime
    zero-fills them, so they score 0 before the mask): slicing the written part copied it first,
    a write and a read more than the products' one read (61 ms of a 217 ms step at 4096 positions)."""
    tape = ir.tape.Tape()
    room = tape.op("Shape", [key_cache], {"start": 2, "end": 3})
    pads = tape.op("Concat", [_tape_ints(tape, 0, 0, 0, 0, 0, 0, 0), tape.op("Sub", [room, total])], {"axis": 0})
    masked = tape.op("CastLike", [tape.op("Constant", [], {"value": ir.tensor(MASKED, ir.DataType.FLOAT)}),
                                  attention_bias])
    # one query row, so no causal mask: the padding bias (batch, 1, 1, total), then the unwritten room
    bias = tape.op("Pad", [attention_bias, pads, masked])
    q = tape.op("Reshape", [query, _tape_ints(tape, 0, kv_heads, heads // kv_heads, head_dim)])
    scores = tape.op("FusedMatMul", [q, key_cache], {"transB": 1, "alpha": 1.0 / math.sqrt(head_dim)},
                     domain="com.microsoft")
    probs = tape.op("Softmax", [tape.op("Add", [scores, bias])], {"axis": -1})
    out = tape.op("Reshape", [tape.op("MatMul", [probs, value_cache]), _tape_ints(tape, 0, 1, heads * head_dim)])
    return _branch(tape, out, f"{layer}.grouped_decode_attention")


def _group_query_attention(query, key, value, key_cache, value_cache, attention_bias, heads: int,
                           kv_heads: int, layer: str) -> ir.Graph:
    """The ``If`` branch for several new tokens: GroupQueryAttention over the written cache (every
    row holds all positions, ``seqlens_k`` = total - 1; it writes the new positions once more, into
    a present of its own that nothing reads)."""
    tape = ir.tape.Tape()
    total = tape.op("Cast", [tape.op("Shape", [attention_bias], {"start": 3, "end": 4})], {"to": ir.DataType.INT32})
    last = tape.op("Sub", [total, tape.op("Constant", [], {"value": ir.tensor([1], ir.DataType.INT32)})])
    seqlens = tape.op("Expand", [last, tape.op("Shape", [attention_bias], {"start": 0, "end": 1})])  # (batch,)
    total = tape.op("Squeeze", [total])
    out, *_ = tape.op_multi_out(
        "GroupQueryAttention", [query, key, value, key_cache, value_cache, seqlens, total, None, None, None,
                                attention_bias],
        {"num_heads": heads, "kv_num_heads": kv_heads}, num_outputs=3, domain="com.microsoft")
    return _branch(tape, out, f"{layer}.group_query_attention")


def _branch(tape: ir.tape.Tape, out: ir.Value, name: str) -> ir.Graph:
    """The tape's nodes as a graph, each node and value named after the branch: the two branches'
    values must not share names (onnxruntime 1.24's float16 converter places its casts by value
    name), and the profiler tells the layers' nodes apart by name."""
    for index, node in enumerate(tape.nodes):
        node.name = f"{name}/{node.op_type}_{index}"
        for output_index, value in enumerate(node.outputs):
            value.name = f"{node.name}:{output_index}"
    return ir.Graph([], [out], nodes=tape.nodes, name=name)


def _tape_ints(tape: ir.tape.Tape, *values: int) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(list(values), ir.DataType.INT64)})


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def _range(start, end):
    """int64 start .. end - 1; each bound an int or a one-element int64 tensor."""
    start, end = (op.Constant(value_int=v) if isinstance(v, int) else op.Squeeze(v) for v in (start, end))
    return op.Range(start, end, op.Constant(value_int=1))


def padding_bias(attention_mask: torch.Tensor, seq: int, dtype: torch.dtype) -> torch.Tensor:
    """``cached_attention``'s additive bias (batch, 1, seq, total) from the (batch, past + seq)
    mask: left padding masked, finite so a fully padded row never makes NaN (and fp16-safe)."""
    batch, total = attention_mask.shape
    bias = (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASKED
    return bias.expand(batch, 1, seq, total)


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
    torch.ops.glm4v_edge.cached_attention.default: cached_attention_onnx,
    torch.ops.glm4v_edge.attention.default: attention_onnx,
}
