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
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.openai_format import from_openai_messages
from glm4v_edge.runtime.variant import Sampling, Variant

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
    thinking_budget: int | None = None  # not OpenAI's: force </think><answer> after N thinking tokens

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


def create_app(variant: Variant, *, served_model: str | None = None, concurrency: int = 1) -> FastAPI:
    """The HTTP app for one loaded variant; at most ``concurrency`` generations run at once."""
    served_model = served_model or variant.name
    slots = asyncio.Semaphore(concurrency)
    stats = {"running": 0, "completed": 0, "last_completion_tokens": None}  # shown at /health
    app = FastAPI(title="glm4v-edge", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return error_response(413, f"request body over {MAX_REQUEST_BYTES // 2**20} MiB")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served_model, **stats}

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
        if body.n != 1:
            return error_response(400, "n must be 1")
        await slots.acquire()
        stats["running"] += 1
        folder = tempfile.TemporaryDirectory(prefix="glm4v-edge-serve-")
        stop = threading.Event()
        try:
            messages = from_openai_messages(body.messages, Path(folder.name))
            events = variant.generate(messages, max_new_tokens=body.token_limit(), sampling=body.sampling(),
                                      thinking_budget=body.thinking_budget, stop=stop)
            first = await anyio.to_thread.run_sync(next, events, None)  # bad input fails here, before any bytes
        except BaseException as error:
            stats["running"] -= 1
            slots.release()
            folder.cleanup()
            if isinstance(error, Glm4vEdgeError):
                return error_response(400, str(error))
            raise
        completion = Completion(served_model, body.token_limit())

        def finish(tokens: int) -> None:
            """Once per request, however it ended (done, error, client gone): stop generating, free the slot."""
            stop.set()
            with contextlib.suppress(ValueError):  # still running in a worker thread: the stop event ends it
                events.close()
            folder.cleanup()
            stats.update(running=stats["running"] - 1, completed=stats["completed"] + 1,
                         last_completion_tokens=tokens)
            slots.release()

        if body.stream:
            return StreamingResponse(completion.stream(first, events, finish), media_type="text/event-stream")
        texts = [first.text] if first is not None else []
        try:
            while (event := await anyio.to_thread.run_sync(next, events, None)) is not None:
                texts.append(event.text)
        except Glm4vEdgeError as error:
            return error_response(400, str(error))
        finally:
            finish(len(texts))
        return completion.whole("".join(texts), len(texts))

    return app


class Completion:
    """Response bodies for one request, in the chat-completions shapes."""

    def __init__(self, model: str, token_limit: int):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.token_limit = token_limit

    def finish_reason(self, tokens: int) -> str:
        return "length" if tokens >= self.token_limit else "stop"

    def whole(self, text: str, tokens: int) -> dict:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": self.finish_reason(tokens)}],
            "usage": {"completion_tokens": tokens},
        }

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self, first, events, finish) -> AsyncIterator[str]:
        tokens = 0
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            event = first
            while event is not None:
                tokens += 1
                if event.text:
                    yield self.chunk({"content": event.text})
                event = await anyio.to_thread.run_sync(next, events, None)
            yield self.chunk({}, self.finish_reason(tokens))
            yield "data: [DONE]\n\n"
        except Glm4vEdgeError as error:  # the stream has started: report in-band, as vLLM does
            yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'invalid_request_error'}})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            finish(tokens)  # also on a client disconnect: the stop event ends the generation


def serve(variant: Variant, *, host: str = "127.0.0.1", port: int = 8000, served_model: str | None = None,
          concurrency: int = 1) -> None:
    import uvicorn

    print(f"serving {variant.name} at http://{host}:{port}/v1 (model id: {served_model or variant.name})",
          file=sys.stderr)
    uvicorn.run(create_app(variant, served_model=served_model, concurrency=concurrency), host=host, port=port,
                log_level="warning")
