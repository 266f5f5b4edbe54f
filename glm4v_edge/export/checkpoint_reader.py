"""Checkpoint tensors read one at a time, as the fp32 arrays a model loaded in fp32 would hold.

A ``WeightRecipe`` names one checkpoint tensor and an optional axis permutation (a ``Transpose``
the graph optimiser folded into the weight). Nothing is read until ``array()`` is called, and the
reader keeps at most one result (the optimiser asks for the same array twice in a row).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

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
        """Read in row blocks straight into the fp32 (permuted) result: the only full-size buffer.

        A cast is exact and element-wise, so permute-then-cast equals cast-then-transpose.
        The file is opened once per block: safetensors memory-maps it, and pages read through a
        live map stay counted in the process's resident memory until the map is closed.
        """
        path = str(self.files[key])
        with safe_open(path, framework="pt") as handle:
            shape = tuple(handle.get_slice(key).get_shape())
            if not shape:
                return handle.get_tensor(key).to(torch.float32)
        out_shape = tuple(shape[axis] for axis in perm) if perm is not None else shape
        out = torch.empty(out_shape, dtype=torch.float32)
        # ``target`` is ``out`` seen in the checkpoint's axis order, so rows copy straight in.
        target = out.permute(tuple(int(axis) for axis in np.argsort(perm))) if perm is not None else out
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * 4)
        rows = max(1, self.block_bytes // row_bytes)
        for start in range(0, shape[0], rows):
            with safe_open(path, framework="pt") as handle:
                target[start:start + rows].copy_(handle.get_slice(key)[start:start + rows])
        return out

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
