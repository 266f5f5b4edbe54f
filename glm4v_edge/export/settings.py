"""What ``export onnx`` is asked to do, with its defaults in one place (no heavy imports: the
CLI reads these to show its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.names import ONNX_DTYPES


@dataclass(frozen=True)
class Q4Settings:
    """MatMulNBits settings. Defaults by measurement (medium decoder, 2 CPU threads, one
    decode step at 515 past tokens): block 128 took 32 ms, block 64 34 ms, block 32 41 ms;
    accuracy level 4 (int8 activations inside the kernel) 41 ms against 66 ms for level 0."""

    block_size: int = 128
    accuracy_level: int = 4
    symmetric: bool = True


@dataclass(frozen=True)
class ExportSettings:
    dtypes: tuple[str, ...] = ONNX_DTYPES
    q4: Q4Settings = field(default_factory=Q4Settings)
    parity: bool = True  # measure every precision against the torch source (reference first, then each)


def parse_dtypes(text: str) -> tuple[str, ...]:
    """'fp32,q4' -> ('fp32', 'q4'), with a clear error for unknown names."""
    chosen = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in ONNX_DTYPES]
    if unknown or not chosen:
        raise Glm4vEdgeError(f"unknown dtype(s) {', '.join(unknown) or text!r}; choose from {', '.join(ONNX_DTYPES)}")
    return tuple(dict.fromkeys(chosen))
