"""A streamed reply as chat messages: thinking in a collapsible block, the answer with its
boxes highlighted, and the speed of the run in small print under it."""

from __future__ import annotations

from dataclasses import dataclass, field

from glm4v_edge.runtime.variant import TokenEvent, decode_tokens_per_s
from glm4v_edge.thinking import Piece, Reply, history_text

THINKING_TITLE = "Thinking"


@dataclass
class ReplyView:
    variant_name: str
    pieces: list[Piece] = field(default_factory=list)
    first_token_s: float | None = None
    thinking_done_s: float | None = None
    last_s: float = 0.0
    tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # of the prompt, reused from the prompt cache
    stopped: bool = False
    finished: bool = False

    def add(self, event: TokenEvent) -> None:
        self.tokens += 1
        self.pieces += event.pieces
        self.prompt_tokens, self.cached_tokens = event.prompt_tokens, event.cached_tokens
        self.first_token_s = event.elapsed_s if self.first_token_s is None else self.first_token_s
        self.last_s = event.elapsed_s
        if self.thinking_done_s is None and any(piece.channel == "answer" for piece in event.pieces):
            self.thinking_done_s = event.elapsed_s

    @property
    def thinking(self) -> str:
        return "".join(piece.text for piece in self.pieces if piece.channel == "thinking")

    def reply(self) -> Reply:
        return Reply.from_pieces(self.pieces)

    def history_answer(self) -> str:
        """What goes back to the model in the next turn: the answer only."""
        return history_text(self.reply())

    def answer_markdown(self) -> str:
        parts, box = [], []
        answer = [(piece.text, piece.in_box) for piece in self.pieces if piece.channel == "answer"]
        for text, in_box in [*answer, ("", False)]:
            if in_box:
                box.append(text)
                continue
            if box:
                parts.append(f"<mark>{''.join(box).strip()}</mark>")
                box = []
            parts.append(text)
        return "".join(parts).strip()

    def metrics(self) -> str:
        if self.first_token_s is None:
            return f"no tokens · {self.variant_name}" + (" · stopped" if self.stopped else "")
        speed = decode_tokens_per_s(self.tokens, self.first_token_s, self.last_s)
        rate = "- tokens/s" if speed is None else f"{speed:.1f} tokens/s"
        fields = [f"first token {self.first_token_s:.2f} s", rate, f"{self.tokens} tokens"]
        if self.cached_tokens is not None and self.prompt_tokens:
            fields.append(f"{self.cached_tokens} of {self.prompt_tokens} prompt tokens reused")
        return " · ".join([*fields, self.variant_name] + (["stopped"] if self.stopped else []))

    def messages(self) -> list[dict]:
        """Chat messages (Gradio's messages format) for the reply so far."""
        shown = []
        if self.thinking:
            thinking_over = self.thinking_done_s is not None or self.finished
            metadata = {"title": THINKING_TITLE, "status": "done" if thinking_over else "pending"}
            if self.thinking_done_s is not None:
                metadata["duration"] = round(self.thinking_done_s, 2)
            shown.append({"role": "assistant", "content": self.thinking.strip(), "metadata": metadata})
        answer = self.answer_markdown()
        if self.finished:
            answer = f"{answer}\n\n<sub>{self.metrics()}</sub>".strip()
        if answer or not self.thinking:
            shown.append({"role": "assistant", "content": answer})
        return shown
