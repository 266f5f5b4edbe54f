"""``glm4v-edge serve``: any variant behind an OpenAI-compatible ``/v1/chat/completions``.

The reply text streams as server-sent events exactly as the model wrote it (``<think>`` and box
tags included), as vLLM does without a reasoning parser; clients split it with the one thinking
parser. Media arrive as data URLs and are read from a per-request temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.openai_format import from_openai_messages
from glm4v_edge.runtime.variant import Sampling, TokenEvent, Variant

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # ten large images as base64 fit; a runaway upload does not
DEFAULT_MAX_TOKENS = 1024


class ChatCompletionRequest(BaseModel):
    """The chat-completions fields this server reads; others (n, tools, ...) are refused or ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    n: int = 1
    stream_options: dict[str, Any] | None = None  # include_usage; continuous_usage_stats (vLLM's)
    continue_final_message: bool = False  # vLLM's: the reply continues the final assistant message
    add_generation_prompt: bool = True  # vLLM's: False when continuing
    return_token_ids: bool = False  # vLLM's: each choice also carries the generated token ids
    thinking_budget: int | None = None  # not OpenAI's: force </think><answer> after N thinking tokens

    def problem(self) -> str | None:
        """Why this request cannot be served, in one line (None: it can)."""
        if not self.messages:
            return "messages must hold at least one message"
        if self.n != 1:
            return "n must be 1"
        for field in ("max_tokens", "max_completion_tokens"):
            if (value := getattr(self, field)) is not None and value < 1:
                return f"{field} must be at least 1 (got {value})"
        if self.continue_final_message:
            if self.add_generation_prompt:
                return "continue_final_message needs add_generation_prompt: false"
            if not self.messages or self.messages[-1].get("role") != "assistant":
                return "continue_final_message needs a final assistant message to continue"
        return None

    def usage_option(self, name: str) -> bool:
        return bool((self.stream_options or {}).get(name))

    def sampling(self) -> Sampling:
        greedy = self.temperature is not None and self.temperature == 0
        return Sampling(
            do_sample=False if greedy else (True if self.temperature is not None else None),
            temperature=None if greedy else self.temperature,
            top_p=None if greedy else self.top_p,
            top_k=self.top_k, repetition_penalty=self.repetition_penalty, seed=self.seed,
        )

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class LimitBody:
    """Refuses a body over ``MAX_REQUEST_BYTES`` before reading it. Plain ASGI (not an
    ``@app.middleware`` function), so the endpoint still hears its client disconnect."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if scope["type"] == "http" and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            await error_response(413, f"request body over {MAX_REQUEST_BYTES // 2**20} MiB")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(variant: Variant, *, served_model: str | None = None, concurrency: int = 1) -> FastAPI:
    """The HTTP app for one loaded variant; at most ``concurrency`` generations run at once.
    Any client that resends its history reuses the variant's prompt cache (no session id)."""
    served_model = served_model or variant.name
    slots = asyncio.Semaphore(concurrency)
    stats = {"running": 0, "completed": 0, "last_completion_tokens": None}  # shown at /health
    app = FastAPI(title="glm4v-edge", docs_url=None, redoc_url=None)
    app.add_middleware(LimitBody)

    @app.get("/health")
    async def health() -> dict:
        cache = getattr(variant, "prompt_cache", None)
        return {"status": "ok", "model": served_model, **stats, "prompt_cache": cache and cache.stats()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_model, "object": "model", "owned_by": "glm4v-edge",
                                            "created": 0}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = ChatCompletionRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as error:
            return error_response(400, f"invalid request: {first_line(error)}")
        if body.model not in (None, "", served_model):
            return error_response(404, f"the model `{body.model}` does not exist; this server serves `{served_model}`",
                                  "not_found_error")
        if body.problem():
            return error_response(400, body.problem())
        await slots.acquire()
        stats["running"] += 1
        folder = tempfile.TemporaryDirectory(prefix="glm4v-edge-serve-")
        stop = threading.Event()
        try:
            messages = from_openai_messages(body.messages, Path(folder.name))
            events = variant.generate(messages, max_new_tokens=body.token_limit(), sampling=body.sampling(),
                                      thinking_budget=body.thinking_budget, stop=stop,
                                      continue_final_message=body.continue_final_message)
            first = await anyio.to_thread.run_sync(next, events, None)  # bad input fails here, before any bytes
        except BaseException as error:
            stats["running"] -= 1
            slots.release()
            folder.cleanup()
            if isinstance(error, Glm4vEdgeError):
                return error_response(400, str(error))
            raise
        completion = Completion(served_model, body.token_limit(), body.return_token_ids)

        def finish() -> None:
            """Once per request, however it ended (done, error, client gone): stop generating, free the slot."""
            stop.set()
            with contextlib.suppress(ValueError):  # still running in a worker thread: the stop event ends it
                events.close()
            folder.cleanup()
            stats.update(running=stats["running"] - 1, completed=stats["completed"] + 1,
                         last_completion_tokens=completion.usage.completion_tokens)
            slots.release()

        if body.stream:
            chunks = completion.stream(first, events, finish, include_usage=body.usage_option("include_usage"),
                                       continuous_usage=body.usage_option("continuous_usage_stats"))
            return ClosingStreamingResponse(chunks, media_type="text/event-stream")
        texts = []
        try:
            event = first
            while event is not None:
                completion.add(event)
                texts.append(event.text)
                if await request.is_disconnected():  # nobody will read the reply: stop generating it
                    break
                event = await anyio.to_thread.run_sync(next, events, None)
        except Glm4vEdgeError as error:
            return error_response(400, str(error))
        finally:
            finish()
        return completion.whole("".join(texts))

    return app


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator however the response ends. When a client leaves, Starlette
    cancels the send and abandons the generator at its ``yield``; its ``finally`` (stop the
    generation, free the slot) would otherwise wait for garbage collection."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


@dataclass
class Usage:
    """Token counts as OpenAI clients read them."""

    prompt_tokens: int = 0  # from the variant's events (0 only if it generated nothing)
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens the prompt cache supplied (None: the variant did not say)

    def add(self, event: TokenEvent) -> None:
        self.completion_tokens += 1
        if event.prompt_tokens is not None:
            self.prompt_tokens = event.prompt_tokens
        if event.cached_tokens is not None:
            self.cached_tokens = event.cached_tokens

    def as_dict(self) -> dict:
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.cached_tokens is not None:  # as OpenAI reports prompt caching
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


class Completion:
    """Response bodies for one request, in the chat-completions shapes."""

    def __init__(self, model: str, token_limit: int, token_ids: bool = False):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.token_limit = token_limit
        self.usage = Usage()
        self.token_ids: list[int] | None = [] if token_ids else None  # vLLM's return_token_ids

    def add(self, event: TokenEvent) -> None:
        self.usage.add(event)
        if self.token_ids is not None:
            self.token_ids.append(event.token_id)

    def finish_reason(self) -> str:
        return "length" if self.usage.completion_tokens >= self.token_limit else "stop"

    def whole(self, text: str) -> dict:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": self.finish_reason(),
                         **({} if self.token_ids is None else {"token_ids": self.token_ids})}],
            "usage": self.usage.as_dict(),
        }

    def chunk(self, delta: dict | None, finish_reason: str | None = None, usage: bool = False,
              token_ids: list[int] | None = None) -> str:
        """One SSE event; ``delta`` None is the usage-only chunk (no choices) OpenAI sends last."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [] if delta is None else [choice]}
        if usage:
            body["usage"] = self.usage.as_dict()
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self, first, events, finish, *, include_usage: bool = False,
                     continuous_usage: bool = False) -> AsyncIterator[str]:
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            event = first
            while event is not None:
                self.add(event)
                # Per-token usage or ids: every token, even one whose text is still pending.
                if event.text or continuous_usage or self.token_ids is not None:
                    yield self.chunk({"content": event.text}, usage=continuous_usage,
                                     token_ids=None if self.token_ids is None else [event.token_id])
                event = await anyio.to_thread.run_sync(next, events, None)
            yield self.chunk({}, self.finish_reason())
            if include_usage:
                yield self.chunk(None, usage=True)
            yield "data: [DONE]\n\n"
        except Glm4vEdgeError as error:  # the stream has started: report in-band, as vLLM does
            yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'invalid_request_error'}})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            finish()  # also on a client disconnect: the stop event ends the generation


def serve(variant: Variant, *, host: str = "127.0.0.1", port: int = 8000, served_model: str | None = None,
          concurrency: int = 1) -> None:
    import uvicorn

    print(f"serving {variant.name} at http://{host}:{port}/v1 (model id: {served_model or variant.name})",
          file=sys.stderr)
    uvicorn.run(create_app(variant, served_model=served_model, concurrency=concurrency), host=host, port=port,
                log_level="warning")
