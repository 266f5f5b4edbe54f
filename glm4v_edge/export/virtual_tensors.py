"""Initializers whose bytes live outside the graph protobuf while onnxruntime's converters run.

The converters of ``glm4v_edge.export.precisions`` (onnxruntime's fp16 converter, its int4 and int8
quantizers) take a whole ``ModelProto``. Here they get a *skeleton*: every large initializer is an
external-data reference that points either at a checkpoint recipe ("virtual", never stored) or at a
scratch file ("spilled": a tensor a converter created, moved out of memory as soon as it exists).
``virtual_tensors()`` lets the converters read such a reference through the usual onnx / onnx_ir
calls, one tensor at a time, so they run unchanged and produce the graph they produce on a fully
loaded model (tests/test_streaming_export.py compares the files byte for byte).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, external_data_helper, numpy_helper
from onnxruntime.quantization import base_quantizer
from onnxruntime.transformers import float16

from glm4v_edge.export.precisions import int4_quantizer
from glm4v_edge.weights import WeightRecipe

DefaultWeightOnlyQuantizer = int4_quantizer().DefaultWeightOnlyQuantizer

PREFIX = "__streaming__/"  # external-data locations owned by the store; never a real file
VIRTUAL = PREFIX + "virtual/"
SPILLED = PREFIX + "spilled"


def _location(tensor: TensorProto) -> str | None:
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def _external_field(tensor: TensorProto, key: str) -> int:
    return int(next(entry.value for entry in tensor.external_data if entry.key == key))


def set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """What ``onnx.external_data_helper.set_external_data`` records, without needing raw_data in memory."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


class TensorStore:
    """Checkpoint recipes and a scratch file, addressed through external-data references."""

    def __init__(self, scratch: Path, spill_threshold: int = 1 << 20, block_bytes: int = 64 << 20):
        self.recipes: list[WeightRecipe] = []
        self.scratch = Path(scratch)
        self.spill_threshold = spill_threshold
        self.block_bytes = block_bytes  # unit of the blocked fp16 conversion and int4 Gather quantization
        self._scratch_handle = None

    # --- references --------------------------------------------------------------------

    def register(self, recipe: WeightRecipe) -> str:
        """The external-data location that stands for ``recipe``."""
        self.recipes.append(recipe)
        return f"{VIRTUAL}{len(self.recipes) - 1}"

    def recipe(self, tensor: TensorProto) -> WeightRecipe | None:
        """The checkpoint recipe a virtual tensor stands for (None: not one of the store's recipes)."""
        location = _location(tensor)
        if location is None or not location.startswith(VIRTUAL):
            return None
        return self.recipes[int(location[len(VIRTUAL):])]

    def owns(self, tensor: TensorProto) -> bool:
        location = _location(tensor)
        return location is not None and location.startswith(PREFIX)

    def data_bytes(self, tensor: TensorProto) -> int:
        """Size of the tensor's data once materialised (owned or in the protobuf)."""
        if not self.owns(tensor):
            return tensor.ByteSize()
        if _location(tensor) == SPILLED:
            return _external_field(tensor, "length")
        count = int(np.prod(tensor.dims, dtype=np.int64))
        return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize

    # --- reading -----------------------------------------------------------------------

    def array(self, tensor: TensorProto) -> np.ndarray:
        """The values of an owned tensor, in its current data type."""
        location = _location(tensor)
        if location == SPILLED:
            loaded = TensorProto()
            loaded.CopyFrom(tensor)
            loaded.data_location = TensorProto.DEFAULT
            del loaded.external_data[:]
            loaded.raw_data = self._read(_external_field(tensor, "offset"), _external_field(tensor, "length"))
            return _original["to_array"](loaded)
        recipe = self.recipes[int(location[len(VIRTUAL):])]
        values = recipe.array()
        if tensor.data_type == TensorProto.FLOAT:
            return values
        if tensor.data_type == TensorProto.FLOAT16:
            half = self._to_float16(values)
            recipe.reader.clear_cache()  # the fp32 array is not needed beside its fp16 copy
            return half
        raise TypeError(f"{tensor.name}: no conversion from fp32 to ONNX type {tensor.data_type}")

    def _to_float16(self, values: np.ndarray) -> np.ndarray:
        """What the fp16 converter does to a loaded initializer, on a reference it only re-typed.

        ``convert_np_to_float16`` is element-wise (clamp to fp16's range, then cast; its min/max
        are only logged), so it runs on row blocks: its temporaries are several times its input.
        """
        out = np.empty(values.shape, dtype=np.float16)
        flat_in, flat_out = values.reshape(-1), out.reshape(-1)
        step = max(1, self.block_bytes // 4)
        for start in range(0, flat_in.size, step):
            flat_out[start:start + step] = float16.convert_np_to_float16(flat_in[start:start + step])
        return out

    def data(self, tensor: TensorProto) -> np.ndarray | bytes:
        """An owned tensor's bytes as ``raw_data`` would hold them (an array's buffer or bytes)."""
        if _location(tensor) == SPILLED:
            return self._read(_external_field(tensor, "offset"), _external_field(tensor, "length"))
        return self.array(tensor)

    def _read(self, offset: int, length: int) -> bytes:
        self._scratch_file().flush()
        with open(self.scratch, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    # --- spilling ----------------------------------------------------------------------

    def _scratch_file(self):
        if self._scratch_handle is None:
            self._scratch_handle = open(self.scratch, "ab")
        return self._scratch_handle

    def spill(self, tensor: TensorProto) -> None:
        """Move a large in-protobuf tensor's bytes to the scratch file, leaving a reference."""
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < self.spill_threshold:
            return
        reference = self.write(tensor.raw_data)
        tensor.ClearField("raw_data")
        self.refer(tensor, *reference)

    def write(self, data) -> tuple[int, int]:
        """Append bytes (or a contiguous array's buffer) to the scratch file: (offset, length)."""
        handle = self._scratch_file()
        offset = handle.tell()
        handle.write(memoryview(data).cast("B"))
        return offset, handle.tell() - offset

    @staticmethod
    def refer(tensor: TensorProto, offset: int, length: int) -> None:
        set_external(tensor, SPILLED, offset, length)

    def spill_graph(self, graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            self.spill(tensor)

    def mark(self) -> int:
        """The scratch file's length now, for ``release``."""
        return self._scratch_file().tell()

    def release(self, mark: int) -> None:
        """Drop what was spilled after ``mark`` (a precision once written), so the scratch file
        holds one conversion at a time, not every precision's."""
        handle = self._scratch_file()
        handle.flush()
        handle.truncate(mark)
        handle.seek(mark)

    def close(self) -> None:
        if self._scratch_handle is not None:
            self._scratch_handle.close()
            self._scratch_handle = None
        self.scratch.unlink(missing_ok=True)


# --- the converters' data access, redirected while ``virtual_tensors`` is active ------------

_original = {
    "to_array": numpy_helper.to_array,
    "from_array": numpy_helper.from_array,
    "make_tensor": onnx.helper.make_tensor,
    "serialize_tensor": ir.serde.serialize_tensor,
    "from_proto": ir.from_proto,
    "load_model": onnx.load_model,
    "make_value_info_from_tensor": float16.make_value_info_from_tensor,
    "quantize": DefaultWeightOnlyQuantizer.quantize,
    "quantize_ndarray": DefaultWeightOnlyQuantizer.quantize_ndarray,
    "quantize_data": base_quantizer.quantize_data,
}
_active: list[TensorStore] = []


def _store_of(tensor) -> TensorStore | None:
    if _active and isinstance(tensor, TensorProto) and _active[-1].owns(tensor):
        return _active[-1]
    return None


def _to_array(tensor, base_dir: str = ""):
    store = _store_of(tensor)
    return store.array(tensor) if store else _original["to_array"](tensor, base_dir)


# Spilling happens in the tensor constructors the converters call, before a tensor is appended
# to the model: protobuf keeps a message's bytes in the model's arena until the whole model is
# freed, so clearing ``raw_data`` once the tensor is in the graph would not give the memory back.
# Large plain arrays are written straight from their buffer (no bytes copy, no protobuf copy);
# anything else is built by the original constructor and then spilled.

_PLAIN = {np.dtype(t) for t in ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16",
                                "int32", "uint32", "int64", "uint64")}


def _external_twin(name, data_type: int, dims, data) -> TensorProto:
    """The TensorProto a constructor makes for ``data``, with the bytes in the scratch file."""
    tensor = TensorProto()
    tensor.dims.extend(int(d) for d in dims)
    tensor.data_type = data_type
    if name:
        tensor.name = name
    TensorStore.refer(tensor, *_active[-1].write(data))
    return tensor


def _from_array(array, name=None):
    store = _active[-1]
    if isinstance(array, np.ndarray) and array.dtype in _PLAIN and array.dtype.byteorder != ">" \
            and array.nbytes >= store.spill_threshold:
        return _external_twin(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape,
                              np.ascontiguousarray(array))
    tensor = _original["from_array"](array, name)
    store.spill(tensor)
    return tensor


def _make_tensor(name, data_type, dims, vals, raw=False):
    store = _active[-1]
    if raw and isinstance(vals, (bytes, bytearray)) and len(vals) >= store.spill_threshold:
        return _external_twin(name, data_type, dims, vals)
    tensor = _original["make_tensor"](name, data_type, dims, vals, raw)
    store.spill(tensor)
    return tensor


def _serialize_tensor(tensor):
    store = _active[-1]
    if isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray) and tensor.raw.dtype in _PLAIN \
            and tensor.raw.dtype == tensor.dtype.numpy() and tensor.raw.dtype.byteorder != ">" \
            and tensor.nbytes >= store.spill_threshold and not tensor.doc_string and not tensor.metadata_props:
        return _external_twin(tensor.name, int(tensor.dtype), tensor.shape.numpy(), np.ascontiguousarray(tensor.raw))
    proto = _original["serialize_tensor"](tensor)
    store.spill(proto)
    return proto


def _from_proto(proto):
    store = _store_of(proto)
    return ir.Tensor(store.array(proto), name=proto.name) if store else _original["from_proto"](proto)


def _load_model(f, format=None, load_external_data=True):  # noqa: A002 - onnx's own signature
    """``onnx.load``: the store's references stay references; other external data is loaded."""
    model = _original["load_model"](f, format, load_external_data=False)
    if load_external_data and isinstance(f, (str, os.PathLike)):
        base_dir = os.path.dirname(os.fspath(f))
        for tensor in external_data_helper._get_all_tensors(model):
            if external_data_helper.uses_external_data(tensor) and not _active[-1].owns(tensor):
                external_data_helper.load_external_data_for_tensor(tensor, base_dir)
                tensor.data_location = TensorProto.DEFAULT
                del tensor.external_data[:]
    return model


def _value_info_from_tensor(tensor):
    """float16's helper reads a whole initializer only for its shape; the dims say the same."""
    if _store_of(tensor):
        return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
    return _original["make_value_info_from_tensor"](tensor)


def _quantize_then_spill(self, node, graph_stack):
    """MatMulNBits, per node: a safety net for any large tensor made without the constructors above."""
    nodes = _original["quantize"](self, node, graph_stack)
    for graph in graph_stack:
        _active[-1].spill_graph(graph)
    return nodes


def _quantize_ndarray_in_row_blocks(data, quantize_axis, block_size, is_symmetric):
    """The int4 Gather quantization (blocks along ``quantize_axis``) run on row blocks.

    The library's function quantizes each row (index before ``quantize_axis``) on its own and packs
    two values per byte in row-major order, so when a row holds an even number of values (and of
    zero points) the row blocks' results concatenate to exactly its whole-array result. Its numpy
    temporaries are several times the int8 array; per block they stay small.
    """
    original = _original["quantize_ndarray"]
    shape = data.shape
    m = int(np.prod(shape[:quantize_axis], dtype=np.int64))
    k = shape[quantize_axis]
    n = int(np.prod(shape[quantize_axis + 1:], dtype=np.int64))
    k_blocks = (k + block_size - 1) // block_size
    rows = max(1, _active[-1].block_bytes // max(1, k * n * data.itemsize))
    if quantize_axis == 0 or m <= rows or (k * n) % 2 or (not is_symmetric and (k_blocks * n) % 2):
        return original(data, quantize_axis, block_size, is_symmetric)
    rows_view = data.reshape((m, k, n))
    packed = np.empty(m * k * n // 2, dtype=np.uint8)
    scales = np.empty((m, k_blocks, n), dtype=data.dtype)
    zero_points = None if is_symmetric else np.empty(m * k_blocks * n // 2, dtype=np.uint8)
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        q, s, z = original(rows_view[start:stop], 1, block_size, is_symmetric)
        packed[start * k * n // 2:stop * k * n // 2] = q
        scales[start:stop] = s
        if zero_points is not None:
            zero_points[start * k_blocks * n // 2:stop * k_blocks * n // 2] = z
    scales_shape = list(shape)
    scales_shape[quantize_axis] = k_blocks
    return packed, scales.reshape(scales_shape), zero_points


def _quantize_data_in_blocks(data, qType, symmetric, reduce_range=False, min_real_range=None,  # noqa: N803
                             rmin_override=None, rmax_override=None):
    """The int8 quantizer's per-tensor ``quantize_data``, applied to blocks of a large flat array.

    Its scale and zero point depend only on the whole array's min and max, computed here exactly as
    the library does and passed as its own overrides; ``quantize_nparray`` is then element-wise.
    Whole, its fp32 temporaries are several times the array.
    """
    original = _original["quantize_data"]
    step = max(1, _active[-1].block_bytes // max(1, data.itemsize))
    if data.ndim != 1 or data.size <= step or qType not in (TensorProto.INT8, TensorProto.UINT8):
        return original(data, qType, symmetric, reduce_range, min_real_range, rmin_override, rmax_override)
    rmin = rmin_override if rmin_override is not None else data.min()
    rmax = rmax_override if rmax_override is not None else data.max()
    zero_point, scale, first = original(data[:step], qType, symmetric, reduce_range, min_real_range, rmin, rmax)
    quantized = np.empty(data.shape, dtype=first.dtype)
    quantized[:step] = first
    for start in range(step, data.size, step):
        quantized[start:start + step] = original(
            data[start:start + step], qType, symmetric, reduce_range, min_real_range, rmin, rmax)[2]
    return zero_point, scale, quantized


_PATCHES = (
    (numpy_helper, "to_array", _to_array),
    (numpy_helper, "from_array", _from_array),  # int8 weights, transposed Gemm weights
    (onnx.helper, "make_tensor", _make_tensor),  # int4 Gather blocks
    (ir.serde, "serialize_tensor", _serialize_tensor),  # MatMulNBits blocks and scales
    (ir, "from_proto", _from_proto),
    (onnx, "load", _load_model),
    (onnx, "load_model", _load_model),
    (float16, "make_value_info_from_tensor", _value_info_from_tensor),
    (DefaultWeightOnlyQuantizer, "quantize", _quantize_then_spill),
    (DefaultWeightOnlyQuantizer, "quantize_ndarray", staticmethod(_quantize_ndarray_in_row_blocks)),
    (base_quantizer, "quantize_data", _quantize_data_in_blocks),
)


@contextlib.contextmanager
def virtual_tensors(store: TensorStore) -> Iterator[None]:
    """Run onnx / onnxruntime conversion code on a skeleton whose references ``store`` owns.

    Patched for the duration (module attributes, so every caller sees them): reading,
    ``onnx.numpy_helper.to_array`` and ``onnx_ir.from_proto``; making (large results spilled),
    ``onnx.numpy_helper.from_array``, ``onnx.helper.make_tensor``, ``onnx_ir.serde.serialize_tensor``;
    ``onnx.load`` (the int8 quantizer's shape-inference round trip through a temporary file); the
    fp16 converter's value-info helper; the int4 quantizer's per-node step; the int4 Gather
    and int8 per-tensor quantizations (run on blocks, same bytes). Every other line of the converters
    runs as it does on a fully loaded model. Not thread-safe; not reentrant across stores.
    """
    saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
             for owner, name, _ in _PATCHES]
    _active.append(store)
    for owner, name, replacement in _PATCHES:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        _active.pop()
