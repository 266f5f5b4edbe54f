"""The remote variant: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, ``glm4v-edge serve``).

Media go as data URLs, the reply streams back as text, and the one thinking parser splits it.
Servers that split reasoning themselves (vLLM / SGLang ``--reasoning-parser glm45``) send it as
``reasoning_content``; it is put back between ``<think>`` tags so the same parser sees one text.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.openai_format import to_openai_messages
from glm4v_edge.runtime.variant import Sampling, TokenEvent
from glm4v_edge.thinking import THINK_CLOSE, THINK_OPEN, ReplyParser

REMOTE_TOKEN_ID = -1  # the server streams text, not token ids


class RemoteVariant:
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0):
        import openai  # only when a remote endpoint is used

        self.base_url = base_url.rstrip("/")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.served_model = model or self._first_model()
        self.name = "remote"

    def _first_model(self) -> str:
        import openai

        try:
            models = self.client.models.list().data
        except openai.OpenAIError as error:
            raise Glm4vEdgeError(f"cannot list models at {self.base_url}: {_reason(error)}") from None
        if not models:
            raise Glm4vEdgeError(f"{self.base_url} serves no model")
        return models[0].id

    def generate(
        self,
        messages: list[dict],
        *,
        max_new_tokens: int = 512,
        sampling: Sampling | None = None,
        thinking_budget: int | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        import openai

        started = time.perf_counter()
        request = request_options(sampling, thinking_budget)
        try:
            stream = self.client.chat.completions.create(
                model=self.served_model, messages=to_openai_messages(messages), stream=True,
                max_tokens=max_new_tokens, **request,
            )
        except openai.OpenAIError as error:
            raise Glm4vEdgeError(f"remote endpoint {self.base_url}: {_reason(error)}") from None
        parser, in_reasoning = ReplyParser(), False
        try:
            for chunk in stream:
                if stop is not None and stop.is_set():
                    break
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                text = ""
                if reasoning:
                    text += ("" if in_reasoning else THINK_OPEN) + reasoning
                    in_reasoning = True
                if delta.content:
                    text += (THINK_CLOSE if in_reasoning else "") + delta.content
                    in_reasoning = False
                if text:
                    yield TokenEvent(token_id=REMOTE_TOKEN_ID, text=text, pieces=tuple(parser.feed(text)),
                                     elapsed_s=time.perf_counter() - started)
        except openai.OpenAIError as error:
            raise Glm4vEdgeError(f"remote endpoint {self.base_url}: {_reason(error)}") from None
        finally:
            stream.close()


def request_options(sampling: Sampling | None, thinking_budget: int | None) -> dict[str, Any]:
    """Sampling overrides as chat-completions fields; non-OpenAI knobs go in ``extra_body``
    (vLLM and SGLang read top_k and repetition_penalty there; ``glm4v-edge serve`` also the budget)."""
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    sampling = sampling or Sampling()
    if sampling.do_sample is False:
        options["temperature"] = 0.0
    elif sampling.temperature is not None:
        options["temperature"] = sampling.temperature
    if sampling.top_p is not None and sampling.do_sample is not False:
        options["top_p"] = sampling.top_p
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    if sampling.top_k is not None:
        extra["top_k"] = sampling.top_k
    if sampling.repetition_penalty is not None:
        extra["repetition_penalty"] = sampling.repetition_penalty
    if thinking_budget is not None:
        extra["thinking_budget"] = thinking_budget
    if extra:
        options["extra_body"] = extra
    return options


def _reason(error: Exception) -> str:
    message = getattr(error, "message", None)
    return first_line(Exception(message)) if message else first_line(error)
