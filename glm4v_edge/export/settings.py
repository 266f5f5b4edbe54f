"""What ``export onnx`` is asked to do, with its defaults in one place (no heavy imports: the
CLI reads these to show its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.names import ONNX_DTYPES


@dataclass(frozen=True)
class Q4Settings:
    """MatMulNBits settings. Defaults by measurement on 2 CPU threads (AMD EPYC, AVX-512 VNNI):
    accuracy level 4 (int8 activations inside the kernel) took 41 ms per medium decode step
    against 66 ms for level 0. Block size: with the fused decoder graph, one medium decode step
    at 128 past tokens took 15-19 ms at block 256 against 21-22 ms at block 128 (interleaved
    runs), as the int8 kernel's per-block work halves; 256 is onnxruntime's largest block.
    Coarser blocks round more: ``--block-size 128`` (or 32, llama.cpp Q4_0's) trades that speed
    for accuracy; on the embedded model 128 and 256 give the same parity and task scores."""

    block_size: int = 256
    accuracy_level: int = 4
    symmetric: bool = True
    # How the int4 weights are chosen: rtn (round to nearest), hqq (HQQ's data-free optimised
    # scales and zero points), or gptq (the decoder's linears from the GPTQ checkpoint ``gptq``,
    # at its group size; everything else round to nearest).
    method: str = "rtn"
    gptq: str | None = None
    # Bits of the vocabulary matrices (the token embeddings' Gather and lm_head's MatMul): 4, or 8
    # (GatherBlockQuantized / MatMulNBits at 8 bits). They are the least compressible weights: on
    # the embedded model their rounding is most of the int4 export's KL from fp32.
    vocab_bits: int = 4
    vision_bits: int = 4  # the vision encoder's linears: 4, or 8
    # The vision encoder's 8-bit kernel: matmulnbits (8-bit blocks of 128, activations in int8 per
    # block inside the kernel) or matmulinteger (onnxruntime's dynamic int8: per-channel weights,
    # activations quantized per tensor), whose int8 GEMM ran the vision tower's shapes 1.6-2.4x
    # faster on 2 CPU threads for about twice the rounding error (docs/export.md).
    vision_kernel: str = "matmulnbits"

    def check(self) -> None:
        for option, bits in (("--vocab-bits", self.vocab_bits), ("--vision-bits", self.vision_bits)):
            if bits not in PART_BITS:
                raise Glm4vEdgeError(f"{option} {bits}: choose {' or '.join(map(str, PART_BITS))}")
        if self.vision_kernel not in VISION_KERNELS:
            raise Glm4vEdgeError(f"--vision-kernel {self.vision_kernel}: choose {' or '.join(VISION_KERNELS)}")
        if self.vision_kernel == "matmulinteger" and self.vision_bits != 8:
            raise Glm4vEdgeError("--vision-kernel matmulinteger is an 8-bit kernel: pass --vision-bits 8 with it")
        if self.method not in Q4_METHODS:
            raise Glm4vEdgeError(f"unknown q4 method {self.method!r}; choose {', '.join(Q4_METHODS)}")
        if (self.method == "gptq") != (self.gptq is not None):
            raise Glm4vEdgeError("--q4-method gptq takes its weights from --gptq FOLDER (a `glm4v-edge quantize "
                                 "gptq` checkpoint), and --gptq goes with --q4-method gptq")


Q4_METHODS = ("rtn", "hqq", "gptq")
PART_BITS = (4, 8)  # what --vocab-bits and --vision-bits take
VISION_KERNELS = ("matmulnbits", "matmulinteger")


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
