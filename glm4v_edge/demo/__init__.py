"""The web chat (Gradio) and the OpenAI-compatible server."""

from glm4v_edge.demo.settings import DemoSettings

__all__ = ["DemoSettings"]
