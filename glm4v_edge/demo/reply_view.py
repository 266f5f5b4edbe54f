"""A streamed reply as chat messages: thinking in a collapsible block, the answer with its
boxes highlighted, and the speed of the run in small print under it."""

from __future__ import annotations

from dataclasses import dataclass, field

from glm4v_edge.runtime.variant import TokenEvent
from glm4v_edge.thinking import Reply, history_text, parse_reply

THINKING_TITLE = "Thinking"


@dataclass
class ReplyView:
    variant_name: str
    texts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    answer: list[tuple[str, bool]] = field(default_factory=list)  # (text, inside a box)
    first_token_s: float | None = None
    thinking_done_s: float | None = None
    last_s: float = 0.0
    tokens: int = 0
    stopped: bool = False
    finished: bool = False

    def add(self, event: TokenEvent) -> None:
        self.tokens += 1
        self.texts.append(event.text)
        self.first_token_s = event.elapsed_s if self.first_token_s is None else self.first_token_s
        self.last_s = event.elapsed_s
        for piece in event.pieces:
            if piece.channel == "thinking":
                self.thinking.append(piece.text)
            else:
                if self.thinking_done_s is None:
                    self.thinking_done_s = event.elapsed_s
                self.answer.append((piece.text, piece.in_box))

    def reply(self) -> Reply:
        return parse_reply("".join(self.texts))

    def history_answer(self) -> str:
        """What goes back to the model in the next turn: the answer only."""
        return history_text(self.reply())

    def answer_markdown(self) -> str:
        parts, box = [], []
        for text, in_box in [*self.answer, ("", False)]:
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
        decode_s = self.last_s - self.first_token_s
        rate = f"{(self.tokens - 1) / decode_s:.1f} tokens/s" if self.tokens > 1 and decode_s > 0 else "- tokens/s"
        fields = [f"first token {self.first_token_s:.2f} s", rate, f"{self.tokens} tokens", self.variant_name]
        return " · ".join(fields + (["stopped"] if self.stopped else []))

    def messages(self) -> list[dict]:
        """Chat messages (Gradio's messages format) for the reply so far."""
        shown = []
        if self.thinking:
            thinking_over = self.thinking_done_s is not None or self.finished
            metadata = {"title": THINKING_TITLE, "status": "done" if thinking_over else "pending"}
            if self.thinking_done_s is not None:
                metadata["duration"] = round(self.thinking_done_s, 2)
            shown.append({"role": "assistant", "content": "".join(self.thinking).strip(), "metadata": metadata})
        answer = self.answer_markdown()
        if self.finished:
            answer = f"{answer}\n\n<sub>{self.metrics()}</sub>".strip()
        if answer or not self.thinking:
            shown.append({"role": "assistant", "content": answer})
        return shown
