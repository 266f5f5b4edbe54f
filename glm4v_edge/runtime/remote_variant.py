"""The remote variant: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, ``glm4v-edge serve``).

Media go as data URLs, the reply streams back as text, and the one thinking parser splits it.
Servers that split reasoning themselves (vLLM / SGLang ``--reasoning-parser glm45``) send it as
``reasoning_content``; it is put back between ``<think>`` tags so the same parser sees one text.
The thinking budget is applied here, by continuing the assistant message (see ``generate``).
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
from glm4v_edge.thinking import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Phase, ReplyParser

REMOTE_TOKEN_ID = -1  # the server streams text, not token ids
CLOSE_THINKING = THINK_CLOSE + ANSWER_OPEN  # what the budget appends to end the thinking


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
        continue_final_message: bool = False,
    ) -> Iterator[TokenEvent]:
        """Stream the reply. The thinking budget is kept here, not by the server (vLLM and SGLang
        drop request fields they do not know): thinking tokens are counted from the stream, and
        at the budget the stream is closed and the same assistant message is continued with
        ``</think><answer>`` appended (``continue_final_message``, as vLLM and SGLang accept)."""
        started = time.perf_counter()
        conversation = to_openai_messages(messages)
        budget = None if continue_final_message else thinking_budget
        parser = ReplyParser()
        written, continuing = "", continue_final_message  # the assistant message so far, and whether to resume it
        if continue_final_message:
            final = conversation.pop()
            if final["role"] != "assistant" or not isinstance(final["content"], str):
                raise Glm4vEdgeError("continue_final_message needs a final assistant message with text content")
            written = final["content"]
        elif budget == 0:
            written, continuing = THINK_OPEN + CLOSE_THINKING, True  # an empty thinking block, then the answer
            yield self._event(written, parser, started, None, forced=True)
        produced = thinking = 0
        while produced < max_new_tokens:
            resumed = [{"role": "assistant", "content": written}] if continuing else []
            chunks = self._chunks(conversation + resumed, max_new_tokens - produced, sampling, continuing, stop)
            forced = False
            for text, tokens, prompt_tokens in chunks:
                produced += tokens
                written += text
                event = self._event(text, parser, started, prompt_tokens)
                thinking += tokens if any(piece.channel == "thinking" for piece in event.pieces) else 0
                yield event
                if budget is not None and parser.phase is Phase.THINKING and thinking >= budget:
                    chunks.close()  # closes the HTTP stream: the server stops generating
                    forced = True
                    break
            if not forced:
                return
            written, continuing, budget = written + CLOSE_THINKING, True, None
            yield self._event(CLOSE_THINKING, parser, started, None, forced=True)

    def _event(self, text: str, parser: ReplyParser, started: float, prompt_tokens: int | None,
               forced: bool = False) -> TokenEvent:
        return TokenEvent(token_id=REMOTE_TOKEN_ID, text=text, pieces=tuple(parser.feed(text)),
                          elapsed_s=time.perf_counter() - started, forced=forced, prompt_tokens=prompt_tokens)

    def _chunks(self, conversation: list[dict], max_tokens: int, sampling: Sampling | None, continuing: bool,
                stop: threading.Event | None) -> Iterator[tuple[str, int, int | None]]:
        """One streamed request: (text, tokens it carries, prompt tokens) per chunk. A continued
        assistant message's new text is the reply, whatever field the server sends it in (a
        reasoning parser never sees the </think> the prompt holds)."""
        import openai

        options = request_options(sampling)
        if continuing:
            options.setdefault("extra_body", {}).update(continue_final_message=True, add_generation_prompt=False)
        try:
            stream = self.client.chat.completions.create(
                model=self.served_model, messages=conversation, stream=True, max_tokens=max_tokens,
                stream_options={"include_usage": True, "continuous_usage_stats": True}, **options)
        except openai.OpenAIError as error:
            raise Glm4vEdgeError(f"remote endpoint {self.base_url}: {_reason(error)}") from None
        in_reasoning, completion_tokens = False, 0
        try:
            for chunk in stream:
                if stop is not None and stop.is_set():
                    return
                usage = getattr(chunk, "usage", None)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                text = ""
                if reasoning and continuing:
                    text += reasoning
                elif reasoning:
                    text += ("" if in_reasoning else THINK_OPEN) + reasoning
                    in_reasoning = True
                if delta.content:
                    text += (THINK_CLOSE if in_reasoning else "") + delta.content
                    in_reasoning = False
                if not text:
                    continue
                # Servers that report usage per chunk (vLLM's continuous_usage_stats, glm4v-edge
                # serve) give exact token counts; others stream one token per chunk.
                tokens = 1
                if usage is not None and usage.completion_tokens is not None:
                    tokens, completion_tokens = usage.completion_tokens - completion_tokens, usage.completion_tokens
                yield text, tokens, getattr(usage, "prompt_tokens", None)
        except openai.OpenAIError as error:
            raise Glm4vEdgeError(f"remote endpoint {self.base_url}: {_reason(error)}") from None
        finally:
            stream.close()


def request_options(sampling: Sampling | None) -> dict[str, Any]:
    """Sampling overrides as chat-completions fields; non-OpenAI knobs go in ``extra_body``
    (vLLM, SGLang and ``glm4v-edge serve`` read top_k and repetition_penalty there)."""
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
    if extra:
        options["extra_body"] = extra
    return options


def _reason(error: Exception) -> str:
    message = getattr(error, "message", None)
    return first_line(Exception(message)) if message else first_line(error)
