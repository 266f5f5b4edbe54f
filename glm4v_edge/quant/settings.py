"""GPTQ settings and their checks against the model's shapes (no heavy imports: the CLI and
the variant registry read these)."""

from __future__ import annotations

from dataclasses import dataclass

from glm4v_edge.errors import Glm4vEdgeError

BITS = (2, 3, 4, 8)  # what GPTQModel's GPTQ kernels pack
METHODS = ("gptq", "rtn")  # rtn: round-to-nearest with the same format, the baseline GPTQ must beat


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
        if self.bits not in BITS:
            raise Glm4vEdgeError(f"--bits {self.bits} is not supported; GPTQ packs {', '.join(map(str, BITS))} bits")
        if self.method not in METHODS:
            raise Glm4vEdgeError(f"unknown method {self.method!r}; choose {' or '.join(METHODS)}")
        if self.group_size == -1:
            return
        if self.group_size < 8:
            raise Glm4vEdgeError(f"--group-size must be -1 or at least 8, not {self.group_size}")
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        widths = {
            "hidden_size": text_config.hidden_size,
            "attention width": text_config.num_attention_heads * head_dim,
            "intermediate_size": text_config.intermediate_size,
        }
        for label, width in widths.items():
            if width % self.group_size:
                raise Glm4vEdgeError(f"--group-size {self.group_size} does not divide the model's {label} ({width})")

    @property
    def variant(self) -> str:
        return f"{'gptq' if self.method == 'gptq' else 'rtn'}-int{self.bits}"
