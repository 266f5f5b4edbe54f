"""One generate interface for every variant of the model."""

from glm4v_edge.runtime.registry import load_variant, register, variant_names
from glm4v_edge.runtime.variant import GenerationResult, Sampling, TokenEvent, Variant, collect

__all__ = [
    "GenerationResult", "Sampling", "TokenEvent", "Variant",
    "collect", "load_variant", "register", "variant_names",
]
