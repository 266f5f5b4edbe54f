"""glm4v-edge: run GLM-4.1V-9B-Thinking on cheaper hardware, and prove it still answers alike."""

import logging

from glm4v_edge.errors import Glm4vEdgeError

# torchao (pulled in by GPTQModel, imported by transformers when present) registers enums
# with torch's pytree at import time, and torch warns about that on every command.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["Glm4vEdgeError", "__version__"]
