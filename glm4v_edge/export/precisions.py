"""fp32 ONNX graph -> the other precisions, each with onnxruntime's own tool (the streaming
export hands these a graph whose weights are read one tensor at a time).

fp16 (activations and weights), q4 (int4 weights in MatMulNBits, fp32 activations), q4f16
(int4 weights, fp16 activations), int8 (dynamic quantization: int8 weights, activations
quantized per call).
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import onnx

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.settings import Q4Settings
from glm4v_edge.names import VISION_OUTPUT

if TYPE_CHECKING:
    from glm4v_edge.export.gptq_weights import NBitsWeight

# Kept in fp32 inside fp16 graphs: reductions and exponentials whose intermediate values
# leave fp16's range (RMSNorm's mean of squares, softmax), the position-embedding resampler, and
# the fused RMSNorms (in fp16 they flipped greedy tokens of the embedded model's q4f16 parity).
FP32_OPS = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "Exp", "GridSample", "Cos", "Sin",
            "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


@contextmanager
def quiet_converters() -> Iterator[None]:
    """onnxruntime's converters log every tensor (and advice) at INFO and WARNING."""
    loggers = [logging.getLogger(name) for name in
               ("", "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.transformers.float16")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in all-zero blocks, handled by np.where
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@cache
def int4_quantizer() -> ModuleType:
    """onnxruntime's ``matmul_nbits_quantizer`` module, imported without the
    ``logging.basicConfig(level=INFO)`` it runs at import (``checkpoint.kept_root_logger``)."""
    from glm4v_edge.checkpoint import kept_root_logger

    with kept_root_logger():
        return importlib.import_module("onnxruntime.quantization.matmul_nbits_quantizer")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with quiet_converters():
        return casts_beside_their_producers(without_repeated_nodes(convert_float_to_float16(
            without_unused_optional_outputs(model), keep_io_types=False,
            op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP32_OPS))))


def without_unused_optional_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each optional node output that nothing reads left unnamed (omitted), as
    onnxruntime-genai's builder writes them. The exporter names every output a schema lists
    (SkipSimplifiedLayerNormalization's ``mean`` and ``inv_std_var``), onnxruntime's float16
    converter casts each named output of a node kept in fp32, including these, which the kernel
    never writes, and onnxruntime before 1.30 then fails at run time ("Missing Input")."""
    read = {name for node in model.graph.node for name in node.input}
    read |= {output.name for output in model.graph.output}
    for node in model.graph.node:
        options = output_options().get((node.domain or "", node.op_type), ())
        for index, name in enumerate(node.output):
            if name and name not in read and index < len(options) and options[index] == "Optional":
                node.output[index] = ""
    return model


@cache
def output_options() -> dict[tuple[str, str], tuple[str, ...]]:
    """(domain, op) -> each output's option ("Single", "Optional", "Variadic") in onnxruntime's
    newest schema of the operator (onnxruntime knows onnx's operators and its contrib ops)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_schemas

    newest = {}
    for schema in sorted(ort_schemas.get_all_operator_schema(), key=lambda s: s.since_version):
        domain = "" if schema.domain == "ai.onnx" else schema.domain
        newest[domain, schema.name] = tuple(o.option.name for o in schema.outputs)
    return newest


def every_node(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """A graph's nodes, each followed by those of its subgraphs (the decoder's attention ``If``)."""
    for node in graph.node:
        yield node
        for subgraph in _subgraphs(node):
            yield from every_node(subgraph)


def casts_beside_their_producers(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each Cast that reads a subgraph's value moved into that subgraph, right after
    the node that makes the value. onnxruntime's float16 converter appends the Casts around a node
    it keeps in fp32 to the main graph even when the node sits in an If branch (the decode
    attention's Softmax), where onnxruntime cannot see their inputs and refuses the graph."""
    visible = {value.name for value in (*model.graph.input, *model.graph.initializer)}
    visible |= {name for node in model.graph.node for name in node.output}
    made_in = {name: graph for node in model.graph.node for graph in _subgraphs(node)
               for inner in every_node(graph) for name in inner.output}
    stray = [node for node in model.graph.node
             if node.op_type == "Cast" and node.input[0] not in visible and node.input[0] in made_in]
    for cast in stray:
        graph = made_in[cast.input[0]]
        producer = next(index for index, node in enumerate(graph.node) if cast.input[0] in node.output)
        graph.node.insert(producer + 1, cast)
        model.graph.node.remove(cast)
    return model


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    return (attribute.g for attribute in node.attribute if attribute.type == onnx.AttributeProto.GRAPH)


def without_repeated_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each exactly repeated node kept once. onnxruntime 1.30's float16 converter
    inserts one identical Cast (same name, same output) per fp32-kept consumer of a tensor, and
    onnxruntime then refuses to load the graph; 1.32's inserts one, so this changes nothing there."""
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    if len(kept) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model


def without_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without the intermediate shapes the exporter recorded, for ``quantize_dynamic``:
    onnxruntime before 1.32 re-infers shapes strictly and refuses one the dynamo exporter records
    in the vision encoder (128 vs 384); with 1.32 the int8 nodes and weights are the same either way."""
    del model.graph.value_info[:]
    return model


def int8_options(op_types: tuple[str, ...] | None = None) -> dict:
    """``quantize_dynamic``'s arguments for int8 (``op_types``: only these; None: every op type it
    quantizes). Shape inference stops at onnxruntime's contrib ops (onnx has no schema for them),
    so the quantizer is told the graph's float type."""
    from onnxruntime.quantization import QuantType

    chosen = {"op_types_to_quantize": list(op_types)} if op_types else {}
    return {"weight_type": QuantType.QInt8, "per_channel": True,
            "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT}, **chosen}


# The q4 vision encoder's int8 kernel quantizes linears only (its Convs are linears by then:
# convs_over_whole_input_to_matmul), never as ConvInteger, which ran slower than fp32 Conv. The
# int8 precision rewrites those Convs too before quantizing every op type it can.
VISION_INT8_OPS = ("MatMul", "Gemm")


def covers_whole_input(attrs: dict, weight_dims: list[int], input_shape: list[int | None] | None) -> bool:
    """A plain Conv (one group, no padding or dilation) whose kernel, at stride = kernel, spans its
    input's every spatial position: one output position, so a matrix product."""
    kernel = list(weight_dims[2:])
    plain = (attrs.get("group", 1) == 1 and not any(attrs.get("pads", [])) and
             all(d == 1 for d in attrs.get("dilations", [1])) and attrs.get("auto_pad", b"NOTSET") == b"NOTSET")
    return (plain and list(attrs.get("strides", kernel)) == kernel and input_shape is not None
            and list(input_shape[1:]) == list(weight_dims[1:2]) + kernel)


def convs_over_whole_input_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Conv(x, W, b)`` whose kernel spans its whole input (the vision tower's patch
    embedding over pre-cut patches, the merger's 2x2 downsample) as ``Reshape(x @ W', out shape)
    + b``, W' the kernel flattened per output channel: onnxruntime's CPU Conv ran the 9B's two
    (25 G multiply-adds) in 1.45 s, about 17 G/s, and as a MatMul each is quantized like any linear.
    Needs the input shapes the exporter records."""
    from onnx import helper, numpy_helper

    shapes = {value.name: [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
              for value in (*model.graph.value_info, *model.graph.input)}
    weights = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or not covers_whole_input(attrs, list(weight.dims), shapes.get(node.input[0])):
            nodes.append(node)
            continue
        out_channels, spatial = weight.dims[0], len(weight.dims) - 2
        matrix = numpy_helper.to_array(weight).reshape(out_channels, -1)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(matrix.T), weight.name))
        name = node.name
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([-1, matrix.shape[1]], np.int64), f"{name}_rows_shape"),
            numpy_helper.from_array(np.array([-1, out_channels] + [1] * spatial, np.int64), f"{name}_out_shape")])
        has_bias = len(node.input) > 2 and node.input[2]
        nodes += [helper.make_node("Reshape", [node.input[0], f"{name}_rows_shape"], [f"{name}_rows"],
                                   name=f"{name}_rows"),
                  helper.make_node("MatMul", [f"{name}_rows", weight.name], [f"{name}_matmul"], name=f"{name}_matmul")]
        product = f"{name}_matmul"
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [f"{name}_bias"], name=f"{name}_bias"))
            product = f"{name}_bias"
        nodes.append(helper.make_node("Reshape", [product, f"{name}_out_shape"], [node.output[0]], name=f"{name}_out"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(x, W, b, transB=1)`` with a constant W as ``MatMul(x, W.T) + b``.

    The exporter writes 2-D linear layers (the vision tower's) as Gemm, which the int4
    quantizer does not handle; as MatMul they get int4 weights like the decoder's.
    """
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = weights[node.input[1]]
        if attrs.get("transB", 0):
            transposed = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), weight.name)
            weight.CopyFrom(transposed)
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product], name=node.name + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# A MatMul weight initializer -> the int4 weights to give it instead of quantizing it here (None:
# quantize it): how GPTQ's calibrated weights reach the graph (export.gptq_weights).
WeightSource = Callable[[onnx.TensorProto], "NBitsWeight | None"]


def to_q4(model: onnx.ModelProto, settings: Q4Settings, weights: WeightSource | None = None) -> onnx.ModelProto:
    """Every MatMul and Gather weight in int4 (MatMulNBits, GatherBlockQuantized): round-to-nearest
    (``settings.method`` rtn), HQQ's data-free optimised scales and zero points (hqq; the Gathers
    round to nearest, HQQ has no Gather), and ``weights``' own where it has them; the vocabulary
    matrices and the vision encoder's linears in 8 bits where ``settings`` says so."""
    module = int4_quantizer()
    model = gemm_to_matmul(model)
    if eight_bit := nodes_in_8bit(model, settings):  # first: the 4-bit passes below then leave these alone
        model = in_8bit(model, eight_bit, settings)
    if settings.method == "hqq":
        hqq = module.HQQWeightOnlyQuantConfig(block_size=settings.block_size, bits=4, op_types_to_quantize=("MatMul",))
        model = _quantized(module.MatMulNBitsQuantizer(model, algo_config=hqq))
        for node in model.graph.node:  # HQQ's nodes leave the compute precision unset (fp32 activations)
            if node.op_type == "MatMulNBits" and settings.accuracy_level and \
                    not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", settings.accuracy_level))
    quantizer = module.MatMulNBitsQuantizer(
        model, bits=4, block_size=settings.block_size, is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level, op_types_to_quantize=("MatMul", "Gather"),
    )
    if weights is not None:
        quantizer.node_quantizer = given_weights_quantizer()(quantizer.algo_config, weights)
    return _quantized(quantizer)


def _quantized(quantizer) -> onnx.ModelProto:
    with quiet_converters():
        quantizer.process()
    return quantizer.model.model


@cache
def given_weights_quantizer() -> type:
    """onnxruntime's int4 quantizer, except that a MatMul whose weight the source gives int4 tensors
    for gets those (at their block size), built into the same MatMulNBits node."""
    module = int4_quantizer()

    class GivenWeightsQuantizer(module.DefaultWeightOnlyQuantizer):
        def __init__(self, config, weights: WeightSource):
            super().__init__(config)
            self.weights, self.given = weights, None

        def quantize_matmul(self, node, graph_stack):
            tensor, _ = module.get_initializer(node.input[1], graph_stack)
            self.given = self.weights(tensor) if tensor is not None else None
            if self.given is None:
                return super().quantize_matmul(node, graph_stack)
            kept = self.config.block_size, self.config.is_symmetric
            self.config.block_size, self.config.is_symmetric = self.given.block_size, self.given.zero_points is None
            try:
                return super().quantize_matmul(node, graph_stack)
            finally:
                self.config.block_size, self.config.is_symmetric = kept
                self.given = None

        def qbits_block_quant(self, fp32weight):
            if self.given is None:
                return super().qbits_block_quant(fp32weight)
            return self.given.packed, self.given.scales.astype(fp32weight.dtype), self.given.zero_points

    return GivenWeightsQuantizer


# Graph outputs computed straight from a vocabulary matrix (a Cast may sit between, in fp16 graphs).
VOCABULARY_OUTPUTS = {"logits": "MatMul", "inputs_embeds": "Gather"}
EIGHT_BIT_BLOCK = 128  # 8-bit rounding hardly depends on the block; 128 divides every GLM-4.1V width
VOCAB_ROWS_PER_STEP = 4096  # rows of the embedding quantized at a time (bounded temporaries)


def vocabulary_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The lm_head MatMul and the token embeddings' Gather, whichever this graph holds."""
    producer = {output: node for node in model.graph.node for output in node.output}
    found = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type == "Cast":
            node = producer.get(node.input[0])
        if node is not None and node.op_type == VOCABULARY_OUTPUTS.get(output.name):
            found.append(node)
    return found


def is_vision_encoder(model: onnx.ModelProto) -> bool:
    return any(output.name == VISION_OUTPUT for output in model.graph.output)


def vision_in_int8(model: onnx.ModelProto, settings: Q4Settings) -> bool:
    """Whether this q4 graph is a vision encoder that ``settings`` puts through onnxruntime's dynamic
    int8 (``quantize_dynamic``: MatMulInteger) instead of MatMulNBits."""
    return settings.vision_kernel == "matmulinteger" and is_vision_encoder(model)


def nodes_in_8bit(model: onnx.ModelProto, settings: Q4Settings) -> list[onnx.NodeProto]:
    """What ``settings`` keeps at 8 bits (MatMulNBits) in this graph: the vocabulary matrices
    (``vocab_bits``), every linear of the vision encoder (``vision_bits``)."""
    chosen = vocabulary_nodes(model) if settings.vocab_bits == 8 else []
    if settings.vision_bits == 8 and is_vision_encoder(model):
        chosen += [node for node in model.graph.node if node.op_type == "MatMul"]
    return chosen


def in_8bit(model: onnx.ModelProto, nodes: list[onnx.NodeProto], settings: Q4Settings) -> onnx.ModelProto:
    """MatMuls as 8-bit MatMulNBits (onnxruntime's quantizer) and Gathers as 8-bit
    GatherBlockQuantized (onnxruntime's quantizer writes only 4-bit Gathers)."""
    if chosen := {node.name for node in nodes if node.op_type == "MatMul"}:
        # the quantizer takes every node of its op types, so all other MatMuls are named as excluded
        others = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.name not in chosen]
        model = _quantized(int4_quantizer().MatMulNBitsQuantizer(
            model, bits=8, block_size=EIGHT_BIT_BLOCK, is_symmetric=settings.symmetric,
            accuracy_level=settings.accuracy_level, nodes_to_exclude=others, op_types_to_quantize=("MatMul",)))
    for node in nodes:
        if node.op_type == "Gather":
            gather_in_8bit(model, node)
    return model


def gather_in_8bit(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    """``Gather(table, ids)`` on a constant (rows, width) table -> GatherBlockQuantized with uint8
    codes, symmetric per block of ``EIGHT_BIT_BLOCK`` along the width: ``(q - 128) * scale``."""
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    table = initializers.get(node.input[0])
    if table is None or len(table.dims) != 2:
        return
    values = numpy_helper.to_array(table)
    rows, width = values.shape
    block = math.gcd(width, EIGHT_BIT_BLOCK)  # a power of two dividing the width
    if block < 16:
        raise Glm4vEdgeError(f"the {table.name} table is {width} wide: 8-bit blocks need a multiple of 16")
    codes = np.empty((rows, width), dtype=np.uint8)
    scales = np.empty((rows, width // block), dtype=values.dtype)
    for start in range(0, rows, VOCAB_ROWS_PER_STEP):
        chunk = values[start:start + VOCAB_ROWS_PER_STEP].astype(np.float32).reshape(-1, width // block, block)
        scale = np.abs(chunk).max(axis=-1, keepdims=True) / 127
        scale[scale == 0] = 1  # an all-zero block: any scale gives zeros back
        codes[start:start + len(chunk)] = (np.clip(np.rint(chunk / scale), -127, 127) + 128).reshape(len(chunk), width)
        scales[start:start + len(chunk)] = scale[..., 0]
    del values
    zero_points = np.full(scales.shape, 128, dtype=np.uint8)
    names = (f"{table.name}_Q8", f"{table.name}_scales", f"{table.name}_zero_points")
    model.graph.initializer.remove(table)
    model.graph.initializer.extend(numpy_helper.from_array(array, name)
                                   for array, name in zip((codes, scales, zero_points), names))
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    quantized = helper.make_node("GatherBlockQuantized", [names[0], node.input[1], names[1], names[2]],
                                 list(node.output), name=node.name + "_Q8", domain="com.microsoft",
                                 bits=8, block_size=block, gather_axis=axis, quantize_axis=1)
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(index, quantized)
