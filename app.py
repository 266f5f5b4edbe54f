"""Hugging Face Spaces entry: the glm4v-edge web chat.

Settings come from the Space's variables (glm4v_edge/demo/settings.py): GLM4V_EDGE_MODEL,
GLM4V_EDGE_ARTIFACTS, GLM4V_EDGE_VARIANT, GLM4V_EDGE_REMOTE_URL, GLM4V_EDGE_PROMPT_CACHE_GB (0 turns
the prompt cache off). With none set it runs the embedded tiny model on CPU. Gradio reads the
port from GRADIO_SERVER_PORT (default 7860).
"""

import os

from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.demo.ui import launch_demo

if __name__ == "__main__":
    launch_demo(DemoSettings.from_env(), host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
