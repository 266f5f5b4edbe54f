"""Incremental detokenization: token ids in, text deltas out, multi-byte characters intact."""

from __future__ import annotations


class IncrementalDetokenizer:
    """Decode a growing id list without re-decoding it all at every step.

    The usual two-offset scheme (as in TGI and vLLM): decode a short window before the new
    token and the window with it; the new text is the difference, held back while it ends
    in an incomplete UTF-8 sequence. Special tokens are kept: they carry ``<think>`` and boxes.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if after.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before):]
