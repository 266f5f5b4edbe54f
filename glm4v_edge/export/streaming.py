"""Bounded-memory ("streaming") ONNX export: a checkpoint folder -> onnx/<graph><suffix>.onnx.

No step holds the whole model in any precision (an in-memory export needs about 9.6 bytes per
parameter: ~99 GB for the 9B). Instead:

1. The model is built without weights (fake tensors on the CPU device) and each graph is traced
   with the same wrappers and ``torch.onnx.export(dynamo=True)`` call, minus optimisation.
2. Every weight initializer becomes a lazy tensor that reads its checkpoint tensor when asked.
3. torch's own optimiser pass runs on that graph; the only change is that a folded
   ``Transpose(weight)`` stays lazy (its values are recomputed when written) instead of held.
4. fp32: ``onnx_ir`` writes the graph, evaluating one lazy tensor at a time.
   Other precisions: the graph is serialised with external-data references in place of the
   weights and handed to onnxruntime's own converters (``glm4v_edge.export.precisions``), which
   read and write tensors one at a time through ``virtual_tensors.virtual_tensors``.

It relies on internals of torch.onnx, onnxscript, onnx_ir and onnxruntime (listed in
``virtual_tensors.py`` and at the patch points here): tests/test_streaming_export.py proves the
files byte-identical to an in-memory export whenever those libraries change.

Peak memory is then a few times the largest tensor (embeddings / lm_head) plus the graph
protobufs, whatever the number of layers.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.onnx._internal._lazy_import import onnxscript_apis  # the optimiser torch.onnx.export runs
from transformers import AutoConfig, Glm4vForConditionalGeneration

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.gptq_weights import GptqCheckpoint, NBitsWeight
from glm4v_edge.export.graphs import SPECS
from glm4v_edge.export.precisions import (
    VISION_INT8_OPS,
    WeightSource,
    convs_over_whole_input_to_matmul,
    int8_options,
    quiet_converters,
    to_fp16,
    to_q4,
    vision_in_int8,
    without_value_info,
)
from glm4v_edge.export.settings import Q4Settings
from glm4v_edge.export.virtual_tensors import TensorStore, set_external, virtual_tensors
from glm4v_edge.names import GRAPHS, external_data_files, graph_file
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.weights import CheckpointReader, WeightRecipe, check_weights_match, computed_buffers

# Weights of a graph below this size are written inside the .onnx file; above it they go to a
# side file. Kept well under protobuf's 2 GB (onnx's own limit is 1.8 GB) so an inline graph
# never has to sit in memory whole.
INLINE_LIMIT = 256 << 20
# A constant folded by the optimiser from small inputs is kept in memory; one this large would
# mean a weight was materialised, which this exporter must not do.
MAX_IN_MEMORY_CONSTANT = 64 << 20


# --- 1. the model without weights ------------------------------------------------------------


def weightless_model(config) -> tuple[Glm4vForConditionalGeneration, FakeTensorMode]:
    """The fp32 model with fake parameters and buffers on the CPU device (no storage).

    Fake tensors on ``cpu`` rather than ``meta`` tensors: the traced graph must be the one a real
    CPU model gives, and device-dependent code paths (buffer copies, stride choices) differ on meta.
    """
    fake_mode = FakeTensorMode()
    with fake_mode:
        model = Glm4vForConditionalGeneration._from_config(copy.deepcopy(config), dtype=torch.float32)
    return model.eval(), fake_mode


# --- 2. one graph, traced, with lazy weights -----------------------------------------------------


class RecipeTensor(ir.LazyTensor):
    """An initializer whose values come from a ``WeightRecipe`` when (and each time) they are read."""

    def __init__(self, recipe: WeightRecipe, name: str):
        super().__init__(lambda: ir.Tensor(recipe.array(), name=name), dtype=ir.DataType.FLOAT,
                         shape=ir.Shape(recipe.shape), name=name)
        self.recipe = recipe


def _checkpoint_keys(model: torch.nn.Module, wrapper: torch.nn.Module) -> dict[str, list[str]]:
    """Initializer name (the wrapper's parameter path) -> candidate names in the model's state dict."""
    names_by_id: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names_by_id.setdefault(id(tensor), []).append(name)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    keys = {}
    wrapped = [*wrapper.named_parameters(remove_duplicate=False), *wrapper.named_buffers(remove_duplicate=False)]
    for name, tensor in wrapped:
        candidates = names_by_id.get(id(tensor), [])
        keys[name] = [*candidates, *[tied[c] for c in candidates if c in tied]]
    return keys


def trace_graph(graph: str, model, fake_mode, reader: CheckpointReader, buffers: dict[str, torch.Tensor]) -> ir.Model:
    """``graph`` as torch.onnx.export builds it before optimisation (the graph's own spec, traced on
    fake inputs), weights attached lazily."""
    spec = SPECS[graph](model)
    spec.args = torch.utils._pytree.tree_map(
        lambda value: fake_mode.from_tensor(value) if isinstance(value, torch.Tensor) else value, spec.args)
    with torch.no_grad():
        onnx_model = spec.export(optimize=False).model
    keys = _checkpoint_keys(model, spec.module)
    for name, value in onnx_model.graph.initializers.items():
        candidates = keys.get(name, [])
        key = next((c for c in candidates if c in reader), None)
        shape = tuple(value.const_value.shape.numpy())
        if key is not None:
            if value.const_value.dtype != ir.DataType.FLOAT:
                raise TypeError(f"{graph}: weight {name} is {value.const_value.dtype}; only fp32 weights are streamed")
            value.const_value = RecipeTensor(WeightRecipe(reader, key, shape), name)
        elif (buffer := next((buffers[c] for c in candidates if c in buffers), None)) is not None:
            value.const_value = ir.Tensor(buffer.numpy(), name=name)
        else:
            raise Glm4vEdgeError(f"the checkpoint has no tensor for {name} (looked for "
                                 f"{', '.join(candidates) or 'no name'}): the weights do not match config.json")
    return onnx_model


# --- 3. torch's optimiser, with lazy transposed weights -----------------------------------------


@contextlib.contextmanager
def _lazy_transposes() -> Iterator[None]:
    """Constant folding of ``Transpose(weight)`` keeps a recipe, not the transposed array.

    The optimiser always folds a transpose of a single-use constant, whatever its size (the int4
    quantizer then sees MatMul with a constant (in, out) weight). It computes the array once to
    fold it; the result is replaced here by the same transpose as a recipe, so it is not held.
    """
    from onnxscript.optimizer import _constant_folding

    fold = _constant_folding.FoldConstantsPass.new_initializer

    def new_initializer(self, node, array):
        value = fold(self, node, array)
        source = node.inputs[0].const_value if node.inputs else None
        if value is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx") \
                and isinstance(source, RecipeTensor):
            perm = node.attributes.get("perm")
            recipe = source.recipe.transposed(perm.as_ints() if perm is not None else None)
            value.const_value = RecipeTensor(recipe, value.name)
        return value

    _constant_folding.FoldConstantsPass.new_initializer = new_initializer
    try:
        yield
    finally:
        _constant_folding.FoldConstantsPass.new_initializer = fold


def optimize(model: ir.Model, reader: CheckpointReader) -> ir.Model:
    """What ``torch.onnx.export(optimize=True)`` does after translation, on lazy weights."""
    with _lazy_transposes():
        model = onnxscript_apis.optimize(model)
    reader.clear_cache()
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if not isinstance(tensor, RecipeTensor) and tensor.nbytes > MAX_IN_MEMORY_CONSTANT:
            raise RuntimeError(f"the optimiser materialised {name} ({tensor.nbytes} bytes): not streamable")
    return model


# --- 4. writing ------------------------------------------------------------------------------


def _weight_bytes(model: ir.Model) -> int:
    return sum(value.const_value.nbytes for value in model.graph.initializers.values())


def write_fp32(model: ir.Model, path: Path, progress: Progress, inline_limit: int) -> int:
    """``ONNXProgram.save``: onnx_ir writes the graph; lazy weights are evaluated one at a time."""
    total = _weight_bytes(model)
    if total <= inline_limit:
        ir.save(model, path)
        progress.written(total, total)
        return total
    written = 0

    def on_tensor(tensor, info):
        nonlocal written
        written += tensor.nbytes
        progress.written(written, total)

    ir.save(model, path, external_data=external_data_files(path.name)[0], callback=on_tensor)  # torch's name
    return total


def skeleton(model: ir.Model, store: TensorStore) -> onnx.ModelProto:
    """The graph as a ModelProto, each lazy weight an external-data reference owned by ``store``."""
    lazy = {name: value.const_value for name, value in model.graph.initializers.items()
            if isinstance(value.const_value, RecipeTensor)}
    for name, tensor in lazy.items():
        model.graph.initializers[name].const_value = ir.ExternalTensor(
            store.register(tensor.recipe), 0, tensor.recipe.nbytes, ir.DataType.FLOAT,
            shape=ir.Shape(tensor.recipe.shape), name=name)
    try:
        return ir.serde.serialize_model(model)
    finally:
        for name, tensor in lazy.items():
            model.graph.initializers[name].const_value = tensor


def gptq_source(gptq: GptqCheckpoint, store: TensorStore) -> WeightSource:
    """MatMul weights read from the source checkpoint -> the GPTQ checkpoint's int4 tensors of the
    same linear (the decoder's; the rest have none and are quantized as before)."""
    def weights(tensor: onnx.TensorProto) -> NBitsWeight | None:
        recipe = store.recipe(tensor)
        if recipe is None or recipe.perm != (1, 0) or not gptq.has(recipe.key):
            return None
        return gptq.nbits(recipe.key, recipe.shape)
    return weights


def convert(skeleton_proto: onnx.ModelProto, dtype: str, q4: Q4Settings, store: TensorStore,
            destination: Path, gptq: GptqCheckpoint | None = None) -> onnx.ModelProto:
    """``precisions.convert`` on the skeleton: the same converters, reading weights through the store."""
    model = onnx.ModelProto()
    model.CopyFrom(skeleton_proto)
    with quiet_converters(), virtual_tensors(store):
        if dtype == "int8":
            return _quantize_dynamic(convs_over_whole_input_to_matmul(model), destination)
        if dtype == "q4" and vision_in_int8(model, q4):
            return _quantize_dynamic(convs_over_whole_input_to_matmul(model), destination, VISION_INT8_OPS)
        if dtype in ("fp16", "q4f16"):
            model = to_fp16(model)
        if dtype in ("q4", "q4f16"):
            model = to_q4(model, q4, gptq_source(gptq, store) if gptq is not None else None)
    return model


def _quantize_dynamic(model: onnx.ModelProto, destination: Path,
                      op_types: tuple[str, ...] | None = None) -> onnx.ModelProto:
    """``quantize_dynamic`` as precisions.convert calls it; its final save is intercepted, not written."""
    from onnxruntime.quantization import quantize_dynamic

    result: dict = {}
    save = onnx.save_model

    def capture(proto, f, *args, **kwargs):
        if os.fspath(f) == os.fspath(destination):
            result["model"] = proto
        else:  # the quantizer's own shape-inference round trip through a temporary folder
            save(proto, f, *args, **kwargs)

    onnx.save_model = capture
    try:
        quantize_dynamic(without_value_info(model), destination, **int8_options(op_types))
    finally:
        onnx.save_model = save
    return result["model"]


def write_converted(model: onnx.ModelProto, path: Path, store: TensorStore, progress: Progress,
                    inline_limit: int) -> int:
    """``onnx.save_model(save_as_external_data=...)`` one tensor at a time.

    Same layout rules as ``precisions._save``: a side file named ``<name>.onnx_data``, tensors in
    initializer order, appended without padding; tensors under 1024 bytes (``sys.getsizeof``) stay inline.
    """
    initializers = model.graph.initializer
    total = sum(store.data_bytes(tensor) for tensor in initializers)
    external = total > inline_limit
    data_name = external_data_files(path.name)[1]  # onnx's name
    data_path = path.with_name(data_name)
    data_path.unlink(missing_ok=True)
    written = 0
    with open(data_path, "wb") if external else contextlib.nullcontext() as data_file:
        for tensor in initializers:
            if store.owns(tensor):
                data = store.data(tensor)
            elif external and tensor.HasField("raw_data"):
                data = tensor.raw_data
            else:
                continue  # stays as it is in the protobuf
            size = memoryview(data).nbytes
            # onnx.save_model's test is sys.getsizeof(raw_data) >= 1024, i.e. header + length.
            if external and sys.getsizeof(b"") + size >= 1024:
                offset = data_file.tell()
                data_file.write(memoryview(data).cast("B"))
                set_external(tensor, data_name, offset, size)
            else:
                tensor.ClearField("data_location")  # proto2: an explicit DEFAULT would be serialised
                del tensor.external_data[:]
                tensor.raw_data = bytes(memoryview(data).cast("B"))
            written += size
            del data
            progress.written(written, total)
    if not external:
        data_path.unlink(missing_ok=True)
    onnx.save_model(model, str(path))
    return total


# --- the entry point ------------------------------------------------------------------------------


def export_graphs(reader: CheckpointReader, out_dir: str | Path, dtypes: tuple[str, ...], q4: Q4Settings, *,
                  progress: Progress = SILENT, inline_limit: int = INLINE_LIMIT, spill_threshold: int = 1 << 20,
                  block_bytes: int = 64 << 20) -> dict[str, int]:
    """Write ``out_dir/onnx/<graph><suffix>.onnx`` for each graph and each of ``dtypes``; return
    each file's weight bytes. ``reader`` reads the local checkpoint (config.json + safetensors).

    Knobs (the defaults suit any size; small values force every path on a tiny model):
    ``inline_limit``, weight bytes above which a graph gets a side file; ``spill_threshold``,
    tensor bytes above which a converter's new tensor goes to the scratch file; ``block_bytes``,
    the unit of blocked reads and of the int4 Gather quantization.
    """
    out_dir = Path(out_dir)
    progress.start("export", len(GRAPHS) * (2 + len(dtypes)))
    config = AutoConfig.from_pretrained(reader.folder)
    reader.block_bytes = block_bytes
    model, fake_mode = weightless_model(config)
    check_weights_match(model, reader)
    buffers = computed_buffers(config)
    (out_dir / "onnx").mkdir(parents=True, exist_ok=True)
    store = TensorStore(out_dir / "onnx" / ".streaming-scratch", spill_threshold, block_bytes)
    gptq = GptqCheckpoint(q4.gptq) if q4.method == "gptq" and {"q4", "q4f16"} & set(dtypes) else None
    files: dict[str, int] = {}
    try:
        for graph in GRAPHS:
            progress.step(f"tracing {graph} (no weights)")
            onnx_model = trace_graph(graph, model, fake_mode, reader, buffers)
            progress.step(f"optimising {graph}")
            onnx_model = optimize(onnx_model, reader)
            if "fp32" in dtypes:
                progress.step(f"writing {graph} (fp32)")
                path = out_dir / graph_file(graph, "fp32")
                files[path.name] = write_fp32(onnx_model, path, progress, inline_limit)
            proto = skeleton(onnx_model, store)
            del onnx_model
            kept = store.mark()  # the skeleton's own spilled tensors
            for dtype in dtypes:
                if dtype == "fp32":
                    continue
                progress.step(f"converting {graph} to {dtype}")
                path = out_dir / graph_file(graph, dtype)
                files[path.name] = write_converted(convert(proto, dtype, q4, store, path, gptq), path, store,
                                                   progress, inline_limit)
                store.release(kept)
                reader.clear_cache()
            del proto
            store.release(0)
    finally:
        store.close()
    return files
