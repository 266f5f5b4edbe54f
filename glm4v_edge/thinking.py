"""The one parser for GLM-4.1V replies: ``<think>…</think><answer>…</answer>`` plus boxes.

It works on streamed text: feed it deltas as they arrive and it returns pieces labelled
thinking or answer, holding back only text that could still be the start of a tag. It is
tolerant of what real replies do: no ``<answer>`` tag after ``</think>``, a reply cut off
mid-tag, a reply that stops without ``</answer>``, or no thinking at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, BOX_OPEN, BOX_CLOSE)


class Phase(Enum):
    START = "start"  # nothing but whitespace yet
    THINKING = "thinking"
    BETWEEN = "between"  # after </think>, before <answer> or the first answer text
    ANSWER = "answer"
    DONE = "done"  # after </answer>: the rest is not part of the reply


@dataclass(frozen=True)
class Piece:
    channel: str  # "thinking" or "answer"
    text: str
    in_box: bool = False


@dataclass
class Reply:
    """A whole reply, split. ``final_answer`` is what exact-match scoring compares."""

    thinking: str = ""
    answer: str = ""
    boxes: list[str] = field(default_factory=list)
    thinking_closed: bool = False
    answer_closed: bool = False

    @property
    def final_answer(self) -> str:
        return (self.boxes[-1] if self.boxes else self.answer).strip()

    @classmethod
    def from_pieces(cls, pieces: list[Piece]) -> Reply:
        """The reply a stream's pieces add up to (consecutive boxed pieces form one box)."""
        boxes: list[str] = []
        previous_in_box = False
        for piece in pieces:
            if piece.in_box:
                if previous_in_box:
                    boxes[-1] += piece.text
                else:
                    boxes.append(piece.text)
            previous_in_box = piece.in_box
        return cls(
            thinking="".join(p.text for p in pieces if p.channel == "thinking").strip(),
            answer="".join(p.text for p in pieces if p.channel == "answer").strip(),
            boxes=[box.strip() for box in boxes],
            thinking_closed=any(p.channel == "answer" for p in pieces),
        )


class ReplyParser:
    """Incremental parser: ``feed`` text deltas, then ``finish``; ``reply`` holds the result."""

    def __init__(self) -> None:
        self.phase = Phase.START
        self.in_box = False
        self.pending = ""
        self._thinking: list[str] = []
        self._answer: list[str] = []
        self._box: list[str] = []
        self._boxes: list[str] = []
        self.thinking_closed = False

    def feed(self, delta: str) -> list[Piece]:
        self.pending += delta
        pieces: list[Piece] = []
        while self.pending:
            cut = self.pending.find("<")
            if cut < 0:
                self._emit(self.pending, pieces)
                self.pending = ""
                break
            if cut > 0:
                self._emit(self.pending[:cut], pieces)
                self.pending = self.pending[cut:]
            tag = next((t for t in TAGS if self.pending.startswith(t)), None)
            if tag is not None:
                self._enter(tag)
                self.pending = self.pending[len(tag):]
            elif any(t.startswith(self.pending) for t in TAGS):
                break  # maybe the start of a tag: wait for more text
            else:
                self._emit("<", pieces)
                self.pending = self.pending[1:]
        return pieces

    def finish(self) -> list[Piece]:
        """Flush held-back text. A reply cut mid-tag drops the partial tag (a lone "<" is text)."""
        pieces: list[Piece] = []
        if self.pending == "<":
            self._emit(self.pending, pieces)
        self.pending = ""
        if self.in_box:
            self._close_box()
        return pieces

    @property
    def reply(self) -> Reply:
        boxes = list(self._boxes)
        if self.in_box:
            boxes.append("".join(self._box))
        return Reply(
            thinking="".join(self._thinking).strip(),
            answer="".join(self._answer).strip(),
            boxes=[b.strip() for b in boxes],
            thinking_closed=self.thinking_closed,
            answer_closed=self.phase is Phase.DONE,
        )

    def _enter(self, tag: str) -> None:
        if tag == THINK_OPEN and self.phase is Phase.START:
            self.phase = Phase.THINKING
        elif tag == THINK_CLOSE and self.phase in (Phase.START, Phase.THINKING):
            self.phase = Phase.BETWEEN
            self.thinking_closed = True
        elif tag == ANSWER_OPEN and self.phase in (Phase.START, Phase.THINKING, Phase.BETWEEN):
            self.thinking_closed = self.thinking_closed or self.phase is Phase.THINKING
            self.phase = Phase.ANSWER
        elif tag == ANSWER_CLOSE and self.phase is Phase.ANSWER:
            if self.in_box:
                self._close_box()
            self.phase = Phase.DONE
        elif tag == BOX_OPEN and not self.in_box and self.phase is not Phase.DONE:
            if self.phase in (Phase.START, Phase.BETWEEN):
                self.phase = Phase.ANSWER
            self.in_box = True
            self._box = []
        elif tag == BOX_CLOSE and self.in_box:
            self._close_box()
        # Any other tag is out of place; dropping it keeps the text readable.

    def _close_box(self) -> None:
        self._boxes.append("".join(self._box))
        self._box = []
        self.in_box = False

    def _emit(self, text: str, pieces: list[Piece]) -> None:
        if self.phase is Phase.DONE or not text:
            return
        if self.phase in (Phase.START, Phase.BETWEEN):
            if not text.strip():
                return  # whitespace between tags
            self.phase = Phase.ANSWER  # text with no <answer> tag is the answer
        channel = "thinking" if self.phase is Phase.THINKING else "answer"
        (self._thinking if channel == "thinking" else self._answer).append(text)
        if self.in_box:
            self._box.append(text)
        pieces.append(Piece(channel, text, self.in_box))


def parse_reply(text: str) -> Reply:
    """Parse a complete reply (the streaming parser, fed all at once)."""
    parser = ReplyParser()
    parser.feed(text)
    parser.finish()
    return parser.reply


def history_text(reply: Reply) -> str:
    """What goes back into a multi-turn conversation: the answer only, never the thinking."""
    return reply.answer
