"""One generate interface for every variant of the model."""

from glm4v_edge.runtime.registry import built_variants, load_variant, register, variant_names
from glm4v_edge.runtime.variant import GenerationResult, Sampling, TokenEvent, Variant, collect

__all__ = [
    "GenerationResult", "Sampling", "TokenEvent", "Variant",
    "built_variants", "collect", "load_variant", "register", "variant_names",
]
