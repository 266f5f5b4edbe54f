"""The interfaces every variant (torch, ONNX, GPTQ, remote) implements, split by capability.

``Variant``: it answers (``generate`` streams ``TokenEvent``s). The CLI's chat, the demo and
``serve`` need nothing more. ``MeasurableVariant``: it runs here on its own processor, so the
benchmark can score it (teacher-forced logits) and time it stage by stage. Callers check the
capability they need, never which kind of variant they hold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from glm4v_edge.thinking import Piece, Reply


@dataclass(frozen=True)
class Sampling:
    """Overrides of the checkpoint's generation_config; ``None`` keeps the checkpoint's value."""

    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    @classmethod
    def greedy(cls) -> Sampling:
        return cls(do_sample=False, repetition_penalty=1.0)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "seed"}


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, already decoded and split by the thinking parser."""

    token_id: int  # -1 from a remote server, which streams text rather than ids
    text: str  # the text this token completes ("" while a multi-byte character is pending)
    pieces: tuple[Piece, ...]  # ``text`` split into thinking / answer
    elapsed_s: float  # since generate() was called; the first event's is the time to first token
    forced: bool = False  # inserted by the thinking budget, not chosen by the model
    prompt_tokens: int | None = None  # the prompt's length (None when a server did not say)
    cached_tokens: int | None = None  # of those, how many came from the prompt cache (None: not known)


@dataclass
class GenerationResult:
    """Everything a caller usually wants once a stream has ended."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    reply: Reply = field(default_factory=Reply)
    first_token_s: float | None = None
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        return decode_tokens_per_s(len(self.token_ids), self.first_token_s, self.total_s)


def decode_tokens_per_s(tokens: int, first_token_s: float | None, last_token_s: float) -> float | None:
    """Tokens after the first, per second of decoding (prefill excluded)."""
    if first_token_s is None or tokens < 2 or last_token_s <= first_token_s:
        return None
    return (tokens - 1) / (last_token_s - first_token_s)


def collect(events: Iterable[TokenEvent]) -> GenerationResult:
    """Drain a token stream into a ``GenerationResult`` (the reply from the events' own pieces)."""
    result = GenerationResult()
    texts, pieces = [], []
    for event in events:
        if result.first_token_s is None:
            result.first_token_s = event.elapsed_s
        result.token_ids.append(event.token_id)
        result.total_s = event.elapsed_s
        texts.append(event.text)
        pieces += event.pieces
    result.text = "".join(texts)
    result.reply = Reply.from_pieces(pieces)
    return result


@runtime_checkable
class Variant(Protocol):
    """A runnable form of the model: it answers. ``messages`` use the transformers chat format."""

    name: str

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
        """Stream the reply. ``thinking_budget`` N: after N thinking tokens force
        ``</think><answer>``; 0 answers straight away. Setting ``stop`` ends the stream.
        ``continue_final_message``: ``messages`` end with an assistant turn whose text the reply
        continues (no budget applies: the caller that wrote that text keeps its own count)."""
        ...


@runtime_checkable
class MeasurableVariant(Variant, Protocol):
    """A variant running in this process: it can be scored and timed stage by stage."""

    processor: Any  # the transformers processor that turns messages into ids and pixels
    context_length: int  # prompt + reply tokens it can hold
    artifact_bytes: int  # size on disk of the files this variant loaded
    decoder_bytes: int  # weight bytes one decode step reads (decoder layers + lm_head): the bandwidth floor
    details: dict  # how it runs (dtype, device, kernel or execution providers), for the report

    def forward_logits(self, batch: dict[str, Any]) -> np.ndarray:
        """Teacher-forced logits (batch, seq, vocab) as float32 for a processor-made batch."""
        ...

    def encode_vision(self, batch: dict[str, Any]) -> None:
        """Run only the vision encoder on the batch's images / frames (a timed stage)."""
        ...

    def prompt_logits(self, batch: dict[str, Any]) -> np.ndarray:
        """Prefill: the whole prompt through the decoder, logits of the last position only."""
        ...
