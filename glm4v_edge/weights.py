"""A checkpoint's weights read one tensor (one block) at a time, never the whole file mapped.

``CheckpointReader`` checks every shard up front and reads a tensor in row blocks, reopening the
file per block: safetensors memory-maps a file, and pages read through a live map stay in the
process's resident memory until the map is closed (loading a bf16 checkpoint into an fp32 model
that way peaks at the model plus its whole shard). The streaming ONNX export reads its weights
through ``WeightRecipe`` (a tensor and an optional axis permutation, read when asked), and
``load_bounded`` builds a transformers model at the memory of its own parameters.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from transformers import Glm4vForConditionalGeneration

from glm4v_edge.errors import Glm4vEdgeError, first_line


@contextlib.contextmanager
def _opened(shard: Path):
    """``safe_open``, with a truncated or foreign file named in one line."""
    try:
        with safe_open(str(shard), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        raise Glm4vEdgeError(f"{shard} is truncated or not a safetensors file ({first_line(error)})") from None


class CheckpointReader:
    """Tensors of a safetensors checkpoint (one file or an indexed set of shards), by key."""

    def __init__(self, folder: str | Path, block_bytes: int = 64 << 20):
        """Every shard is opened once here, so a missing or truncated one is named before any work."""
        self.folder = Path(folder)
        self.block_bytes = block_bytes  # fp32 bytes per read: bounds the transient next to the result
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {key: self.folder / file for key, file in weight_map.items()}
        else:
            single = self.folder / "model.safetensors"
            if not single.is_file():
                raise Glm4vEdgeError(f"no model.safetensors or model.safetensors.index.json in {self.folder}")
            with _opened(single) as handle:
                self.files = dict.fromkeys(handle.keys(), single)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(self.files.values())):
            if not shard.is_file():
                raise Glm4vEdgeError(f"checkpoint shard missing: {shard} (listed in {index.name})")
            with _opened(shard) as handle:
                listed = {key for key, file in self.files.items() if file == shard}
                missing = listed - set(handle.keys())
                if missing:
                    raise Glm4vEdgeError(f"{shard.name} lacks {len(missing)} tensors its index lists, e.g. "
                                         f"{sorted(missing)[0]}")
                self.shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in listed})
        self._cached: tuple[tuple, np.ndarray] | None = None

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def array(self, key: str, perm: tuple[int, ...] | None = None) -> np.ndarray:
        """``key`` as a C-contiguous fp32 array, axes permuted by ``perm`` if given."""
        cache_key = (key, perm)
        if self._cached is not None and self._cached[0] == cache_key:
            return self._cached[1]
        self._cached = None  # drop the previous tensor before reading the next
        array = self._read_fp32(key, perm).numpy()
        self._cached = (cache_key, array)
        return array

    def _read_fp32(self, key: str, perm: tuple[int, ...] | None) -> torch.Tensor:
        """Read straight into the fp32 (permuted) result: the only full-size buffer. A cast is
        exact and element-wise, so permute-then-cast equals cast-then-transpose."""
        shape = self.shapes[key]
        out = torch.empty(tuple(shape[axis] for axis in perm) if perm is not None else shape, dtype=torch.float32)
        # ``out`` seen in the checkpoint's axis order, so rows copy straight in.
        self.read_into(key, out.permute(tuple(int(axis) for axis in np.argsort(perm))) if perm is not None else out)
        return out

    def read_into(self, key: str, target: torch.Tensor) -> None:
        """Copy ``key`` into ``target`` (same shape, any dtype: the copy casts) in row blocks."""
        path, shape = str(self.files[key]), self.shapes[key]
        if not shape:
            with safe_open(path, framework="pt") as handle:
                target.copy_(handle.get_tensor(key))
            return
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * 4)
        rows = max(1, self.block_bytes // row_bytes)
        for start in range(0, shape[0], rows):
            with safe_open(path, framework="pt") as handle:  # one open per block: see the module's note
                target[start:start + rows].copy_(handle.get_slice(key)[start:start + rows])

    def clear_cache(self) -> None:
        self._cached = None


@dataclass(frozen=True)
class WeightRecipe:
    """How to produce one fp32 initializer from the checkpoint."""

    reader: CheckpointReader
    key: str
    shape: tuple[int, ...]  # of the result, after ``perm``
    perm: tuple[int, ...] | None = None

    def array(self) -> np.ndarray:
        values = self.reader.array(self.key, self.perm)
        if values.shape != self.shape:  # the checkpoint does not match the config the graph came from
            raise ValueError(f"{self.key}: checkpoint gives shape {values.shape}, the graph expects {self.shape}")
        return values

    def transposed(self, perm: tuple[int, ...] | None) -> WeightRecipe:
        """This recipe followed by ONNX ``Transpose(perm)`` (reversed axes when ``perm`` is None)."""
        rank = len(self.shape)
        perm = tuple(perm) if perm is not None else tuple(reversed(range(rank)))
        combined = tuple(self.perm[axis] for axis in perm) if self.perm is not None else perm
        shape = tuple(self.shape[axis] for axis in perm)
        identity = combined == tuple(range(rank))
        return WeightRecipe(self.reader, self.key, shape, None if identity else combined)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4


def check_weights_match(model: Glm4vForConditionalGeneration, reader: CheckpointReader) -> None:
    """Every parameter the config implies is in the checkpoint with its shape: checked from the
    checkpoint's headers before anything is read or written."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for name, parameter in model.named_parameters():
        key = name if name in reader else tied.get(name)
        if key is None or key not in reader:
            raise Glm4vEdgeError(f"the checkpoint has no tensor {name}: the weights do not match config.json")
        if reader.shapes[key] != tuple(parameter.shape):
            raise Glm4vEdgeError(f"checkpoint tensor {key} has shape {reader.shapes[key]}, the config gives "
                                 f"{tuple(parameter.shape)}: the weights do not match config.json")


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters go to ``meta`` as they are registered; buffers are computed for real."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def computed_buffers(config) -> dict[str, torch.Tensor]:
    """Buffers the checkpoint does not hold (rotary ``inv_freq``), as the model's constructor makes them."""
    with _parameters_on_meta():
        model = Glm4vForConditionalGeneration._from_config(copy.deepcopy(config), dtype=torch.float32)
    return {name: buffer for name, buffer in model.named_buffers() if buffer.device.type == "cpu"}


def load_bounded(folder: str | Path, config, dtype: torch.dtype) -> Glm4vForConditionalGeneration:
    """The model ``from_pretrained(folder, dtype=dtype)`` gives (same class, config, tensors: tested),
    at the memory of its parameters plus one block: they are allocated once and filled block by
    block. Used for parity references, where a 9B-wide source must fit beside nothing else."""
    reader = CheckpointReader(folder)
    buffers = computed_buffers(config)
    with torch.device("meta"):
        model = Glm4vForConditionalGeneration._from_config(copy.deepcopy(config), dtype=dtype)
    check_weights_match(model, reader)
    model.to_empty(device="cpu")
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            reader.read_into(name if name in reader else tied[name], parameter)
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return model.eval()
