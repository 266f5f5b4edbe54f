"""glm4v-edge: run GLM-4.1V-9B-Thinking on cheaper hardware, and prove it still answers alike."""

from glm4v_edge.errors import Glm4vEdgeError

__version__ = "0.1.0"
__all__ = ["Glm4vEdgeError", "__version__"]
