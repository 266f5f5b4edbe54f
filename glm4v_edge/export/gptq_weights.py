"""GPTQ's int4 weights as onnxruntime MatMulNBits tensors, so the ONNX q4 carries the calibrated
weights of a ``glm4v-edge quantize gptq`` checkpoint instead of round-to-nearest ones.

GPTQModel's format (``checkpoint_format`` gptq, or gptq_v2) per linear, for ``y = x @ W`` with W
(K in, N out): ``qweight`` int32 (K/8, N), eight 4-bit codes per word along K; ``qzeros`` int32
(K/G, N/8), eight zero points per word along N, stored minus one in the gptq (v1) format;
``scales`` fp16 (K/G, N); ``g_idx`` (K,), the group of each input row; so
``W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])``. MatMulNBits keeps the same
codes per column: ``B`` uint8 (N, K/G, G/2), two codes per byte (the lower row in the low
nibble), ``scales`` (N, K/G), and ``zero_points`` uint8 (N, ceil(K/G / 2)), two per byte, left
out when every zero point is 8 (its default): one tensor at a time, read from the checkpoint
when its node is quantized. GPTQModel's split ``gate_proj`` / ``up_proj`` are joined into GLM's
``gate_up_proj``; act-order (a ``g_idx`` that is not ``k // G``) is refused: MatMulNBits groups
consecutive rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from glm4v_edge.errors import Glm4vEdgeError

FORMATS = ("gptq", "gptq_v2")
SPLIT_HALVES = (".mlp.gate_up_proj", (".mlp.gate_proj", ".mlp.up_proj"))


@dataclass(frozen=True)
class NBitsWeight:
    """One linear's weight in MatMulNBits' layout."""

    packed: np.ndarray  # uint8 (N, K / block, block / 2)
    scales: np.ndarray  # float32 (N, K / block)
    zero_points: np.ndarray | None  # uint8 (N, ceil(blocks / 2)); None: all 8 (symmetric)
    block_size: int


def unpack_rows(packed: np.ndarray) -> np.ndarray:
    """int32 (R, C) holding eight 4-bit values per word along the rows -> uint8 (8 R, C)."""
    shifts = (4 * np.arange(8, dtype=np.uint32))[None, :, None]
    words = packed.astype(np.uint32)[:, None, :]
    return ((words >> shifts) & 0xF).astype(np.uint8).reshape(-1, packed.shape[1])


def unpack_columns(packed: np.ndarray) -> np.ndarray:
    """int32 (R, C) holding eight 4-bit values per word along the columns -> uint8 (R, 8 C)."""
    shifts = (4 * np.arange(8, dtype=np.uint32))[None, None, :]
    words = packed.astype(np.uint32)[:, :, None]
    return ((words >> shifts) & 0xF).astype(np.uint8).reshape(packed.shape[0], -1)


def pack_pairs(values: np.ndarray) -> np.ndarray:
    """uint8 (..., M) of 4-bit values -> (..., ceil(M / 2)): two per byte, the first in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), dtype=np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


class GptqCheckpoint:
    """The int4 linears of a GPTQ checkpoint folder, read tensor by tensor."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise Glm4vEdgeError(f"{self.folder} is not a GPTQ checkpoint (no config.json); make one with "
                                 "`glm4v-edge quantize gptq`")
        quantization = json.loads(config_path.read_text()).get("quantization_config") or {}
        if quantization.get("quant_method") != "gptq":
            raise Glm4vEdgeError(f"{self.folder} is not a GPTQ checkpoint (quantization_config: "
                                 f"{quantization.get('quant_method', 'none')})")
        self.bits, self.group_size = quantization.get("bits"), quantization.get("group_size")
        self.format = quantization.get("checkpoint_format", quantization.get("format", "gptq"))
        if self.bits != 4:
            raise Glm4vEdgeError(f"{self.folder} has {self.bits}-bit weights; the ONNX q4 takes 4-bit GPTQ only")
        if self.format not in FORMATS:
            raise Glm4vEdgeError(f"{self.folder} is in GPTQ format {self.format!r}; readable: {', '.join(FORMATS)}")
        self.handles = [safe_open(path, "np") for path in sorted(self.folder.glob("*.safetensors"))]
        self.index = {name: handle for handle in self.handles for name in handle.keys()}
        if not self.index:
            raise Glm4vEdgeError(f"no safetensors weights in {self.folder}")
        self.settings = {"bits": self.bits, "group_size": self.group_size, "sym": quantization.get("sym"),
                         "desc_act": quantization.get("desc_act"), "format": self.format}

    def _tensor(self, name: str) -> np.ndarray:
        return self.index[name].get_tensor(name)

    def _halves(self, prefix: str) -> list[str] | None:
        """The checkpoint prefixes that make up the source linear ``prefix`` (one, or gate + up)."""
        if prefix + ".qweight" in self.index:
            return [prefix]
        fused, halves = SPLIT_HALVES
        if prefix.endswith(fused):
            split = [prefix.removesuffix(fused) + half for half in halves]
            if all(name + ".qweight" in self.index for name in split):
                return split
        return None

    def has(self, weight_key: str) -> bool:
        return weight_key.endswith(".weight") and self._halves(weight_key.removesuffix(".weight")) is not None

    def codes(self, weight_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q uint8 (K, N), zero points uint8 (K/G, N), scales float32 (K/G, N)) of one linear."""
        parts = []
        for prefix in self._halves(weight_key.removesuffix(".weight")):
            q = unpack_rows(self._tensor(prefix + ".qweight"))
            scales = self._tensor(prefix + ".scales").astype(np.float32)
            zeros = unpack_columns(self._tensor(prefix + ".qzeros"))[:, :scales.shape[1]]
            if self.format == "gptq":
                zeros = (zeros.astype(np.int16) + 1).astype(np.uint8)  # v1 stores zero - 1
            groups = q.shape[0] // scales.shape[0]
            if prefix + ".g_idx" in self.index and not np.array_equal(
                    self._tensor(prefix + ".g_idx"), np.arange(q.shape[0]) // groups):
                raise Glm4vEdgeError(f"{prefix} was quantized with act-order (desc_act): MatMulNBits groups "
                                     "consecutive input rows; quantize again with --no-desc-act")
            parts.append((q, zeros, scales))
        return tuple(np.concatenate(arrays, axis=1) for arrays in zip(*parts))

    def nbits(self, weight_key: str, shape: tuple[int, int]) -> NBitsWeight:
        """The linear whose source weight is ``weight_key`` ((K, N) as the graph multiplies by it)."""
        q, zeros, scales = self.codes(weight_key)
        if q.shape != tuple(shape):
            raise Glm4vEdgeError(f"{weight_key}: the GPTQ checkpoint's weight is {q.shape}, the graph's is "
                                 f"{tuple(shape)}: not a quantization of this model")
        k, n = q.shape
        block = k // scales.shape[0]
        packed = pack_pairs(q.T.reshape(n, k // block, block))
        zero_points = None if (zeros == 8).all() else pack_pairs(np.ascontiguousarray(zeros.T))
        return NBitsWeight(packed, np.ascontiguousarray(scales.T), zero_points, block)

    def dequantized(self, weight_key: str) -> np.ndarray:
        """W (K, N) float32 as GPTQ defines it (tests compare the graph against GPTQModel's own)."""
        q, zeros, scales = self.codes(weight_key)
        groups = np.arange(q.shape[0]) // (q.shape[0] // scales.shape[0])
        return scales[groups] * (q.astype(np.float32) - zeros[groups].astype(np.float32))
