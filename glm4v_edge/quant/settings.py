"""GPTQ settings and their checks against the model's shapes (no heavy imports: the CLI and
the variant registry read these)."""

from __future__ import annotations

from dataclasses import dataclass

from glm4v_edge.dims import head_dim
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.names import GPTQ_BITS, GPTQ_METHODS, quantized_variant


@dataclass(frozen=True)
class GptqSettings:
    bits: int = 4
    group_size: int = 128  # -1: one scale per output channel
    desc_act: bool = False  # act-order; off by default: vLLM's fastest kernels and most published builds
    sym: bool = True  # vLLM's Marlin kernels need symmetric GPTQ
    calibration: int = 128
    damp_percent: float = 0.05
    method: str = "gptq"

    def check(self, text_config) -> None:
        """Refuse settings GPTQModel or the model's shapes cannot take, before loading anything."""
        if self.bits not in GPTQ_BITS:
            supported = ", ".join(map(str, GPTQ_BITS))
            raise Glm4vEdgeError(f"--bits {self.bits} is not supported; GPTQ packs {supported} bits")
        if self.method not in GPTQ_METHODS:
            raise Glm4vEdgeError(f"unknown method {self.method!r}; choose {' or '.join(GPTQ_METHODS)}")
        if self.group_size == -1:
            return
        if self.group_size < 8:
            raise Glm4vEdgeError(f"--group-size must be -1 or at least 8, not {self.group_size}")
        widths = {
            "hidden_size": text_config.hidden_size,
            "attention width": text_config.num_attention_heads * head_dim(text_config),
            "intermediate_size": text_config.intermediate_size,
        }
        for label, width in widths.items():
            if width % self.group_size:
                raise Glm4vEdgeError(f"--group-size {self.group_size} does not divide the model's {label} ({width})")

    @property
    def variant(self) -> str:
        return quantized_variant(self.method, self.bits)
