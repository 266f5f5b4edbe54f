"""The prompt cache: the key/value caches and vision features of earlier generations, reused by
later requests that share a prefix (as vLLM's automatic prefix caching and llama.cpp's
``cache_prompt`` do).

A prompt is matched on its *keys*: its token ids, except that every image or video placeholder
carries a key made from that item's content hash (the processor's pixels and grid), because the
placeholder ids of two different images are identical. The longest common prefix with any stored
entry is reused and only the rest is prefilled. Vision features are kept by content hash as
well, so an image seen before is not encoded again even where the prompt diverged before it.

Reuse must change only the time, so a position is reused only where its key/value cache is bit
for bit what one run over the whole prompt computes. Kernels round a row differently by where it
falls in their row tiles: onnxruntime's 4-bit MatMulNBits computes rows in pairs and the odd last
row of a run alone, and a one-row run (a decode step) takes a matrix-vector path even in fp32
(both measured). So each variant states its prefill tile (``prefill_tile``: a run's rows agree with
a whole-prompt run's when the run starts at a multiple of it, has at least that many rows, and the
rows lie in its whole tiles; None: no row is independent of the run, as with int8's per-tensor
activation scale, and only features are reused). An entry records how many leading positions meet
that (``exact``); a match is cut to it, to a multiple of the tile, and to leave a tile to prefill.

An entry is what a finished generation leaves of its cache that a later prompt can reuse: its
prompt's exact positions (the reply's were computed a row at a time, and the history a
conversation sends back holds only the answer anyway). Entries never change once stored: a
generation copies the prefix it reuses (two users asking about one image never write the same
memory) and adds its own entry only when it ended between two tokens (done, stopped, abandoned),
never after an error. Everything stored counts against
one byte budget; the least recently used goes first.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_PROMPT_CACHE_GB = 2.0  # the 9B q4 (~7.6 GiB peak) plus this fits a 16 GB Space
MEDIA = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


@dataclass(frozen=True)
class MediaItem:
    """One image or video of a prompt, as the processor prepared it."""

    kind: str  # "image" or "video"
    source: str  # the batch key holding its pixels: pixel_values or pixel_values_videos
    grid: np.ndarray  # (t, h, w) in patches
    patches: slice  # its rows of the batch's pixels
    rows: int  # its placeholder tokens (= feature rows)
    digest: bytes = b""  # hash of kind, grid and pixels: equal only for identical inputs

    @property
    def key(self) -> int:
        """The negative int64 its placeholder positions carry in a prompt's keys (token ids are >= 0)."""
        return -1 - int.from_bytes(self.digest[:7], "big")


def media_items(batch: dict[str, Any], merge_size: int, digests: bool = False) -> list[MediaItem]:
    """Every image, then every video, of a one-prompt processor batch, in prompt order (a
    conversation holds images or videos, never both); ``digests``: with content hashes."""
    items = []
    for kind, pixels_key, grid_key in MEDIA:
        if batch.get(pixels_key) is None:
            continue
        pixels, start = _numpy(batch[pixels_key]), 0
        for grid in _numpy(batch[grid_key]):
            patches = slice(start, start + int(np.prod(grid)))
            digest = b""
            if digests:
                hashed = hashlib.blake2b(kind.encode(), digest_size=16)
                hashed.update(np.ascontiguousarray(grid, dtype=np.int64).tobytes())
                hashed.update(np.ascontiguousarray(pixels[patches]).tobytes())
                digest = hashed.digest()
            items.append(MediaItem(kind, pixels_key, grid, patches, int(np.prod(grid)) // merge_size**2, digest))
            start = patches.stop
    return items


def prompt_keys(input_ids: np.ndarray, mm_token_type_ids: np.ndarray | None, items: list[MediaItem]) -> np.ndarray:
    """The prompt's token ids with each media placeholder replaced by its item's key."""
    keys = np.array(input_ids, dtype=np.int64).reshape(-1)
    if mm_token_type_ids is None or not items:
        return keys
    media = np.flatnonzero(np.asarray(mm_token_type_ids).reshape(-1) != 0)
    keys[media] = np.repeat([item.key for item in items], [item.rows for item in items])
    return keys


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass
class Entry:
    """One finished generation's key/value cache: ``kv`` holds the first ``len(keys)`` positions,
    of which the first ``exact`` may be reused (see the module's docstring)."""

    owner: str
    keys: np.ndarray
    kv: list  # per layer key, value, ... in the variant's own form (numpy for ONNX, tensors for torch); never written
    nbytes: int
    exact: int


@dataclass
class Features:
    owner: str
    value: Any  # (rows, hidden) as the vision encoder returned it
    nbytes: int


class PromptCache:
    """Entries and vision features of every variant that shares it, within ``max_bytes``.
    ``owner`` keeps variants apart (an entry of one is never offered to another)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.items: OrderedDict[tuple, Entry | Features] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()
        self.ids = itertools.count()  # entry keys
        self.counts = {"lookups": 0, "hits": 0, "prompt_tokens": 0, "cached_tokens": 0,
                       "feature_lookups": 0, "feature_hits": 0}

    @classmethod
    def from_gb(cls, gb: float | None) -> PromptCache | None:
        """A cache of ``gb`` GiB (None: the default); 0 turns it off (None returned)."""
        gb = DEFAULT_PROMPT_CACHE_GB if gb is None else gb
        return cls(int(gb * 2**30)) if gb > 0 else None

    @property
    def nbytes(self) -> int:
        with self.lock:
            return sum(item.nbytes for item in self.items.values())

    def longest_prefix(self, owner: str, keys: np.ndarray, limit: int, tile: int = 1) -> tuple[int, Entry | None]:
        """The entry sharing the longest reusable prefix with ``keys`` (at most ``limit``
        positions, a multiple of ``tile``) and that prefix's length."""
        best, best_length = None, 0
        with self.lock:
            for key, item in self.items.items():
                if isinstance(item, Entry) and item.owner == owner:
                    length = min(common_prefix(item.keys, keys), item.exact, limit) // tile * tile
                    if length > best_length:
                        best, best_length = key, length
            self.counts["lookups"] += 1
            self.counts["prompt_tokens"] += len(keys)
            if best is None:
                return 0, None
            self.items.move_to_end(best)
            self.counts["hits"] += 1
            self.counts["cached_tokens"] += best_length
            return best_length, self.items[best]

    def add_entry(self, owner: str, keys: np.ndarray, kv: Any, nbytes: int, exact: int | None = None) -> None:
        """Store a finished generation whose first ``exact`` positions may be reused (None: all);
        entries it covers (a prefix of its keys, no more reusable) are dropped."""
        exact = len(keys) if exact is None else exact
        with self.lock:
            for key, item in list(self.items.items()):
                if isinstance(item, Entry) and item.owner == owner and item.exact <= exact \
                        and common_prefix(item.keys, keys) >= item.exact:
                    del self.items[key]
            self._add(("kv", owner, next(self.ids)), Entry(owner, keys, kv, nbytes + keys.nbytes, exact))

    def features(self, owner: str, digest: bytes) -> Any | None:
        with self.lock:
            self.counts["feature_lookups"] += 1
            found = self.items.get(("features", owner, digest))
            if found is None:
                return None
            self.items.move_to_end(("features", owner, digest))
            self.counts["feature_hits"] += 1
            return found.value

    def add_features(self, owner: str, digest: bytes, value: Any, nbytes: int) -> None:
        with self.lock:
            self._add(("features", owner, digest), Features(owner, value, nbytes))

    def _add(self, key: tuple, item: Entry | Features) -> None:
        if item.nbytes > self.max_bytes:
            return  # larger than the whole budget: not kept
        self.items[key] = item
        self.items.move_to_end(key)
        total = sum(stored.nbytes for stored in self.items.values())
        while total > self.max_bytes:
            _, evicted = self.items.popitem(last=False)
            total -= evicted.nbytes

    def forget(self, owner: str) -> None:
        """Drop everything of one variant (it was unloaded)."""
        with self.lock:
            for key in [key for key, item in self.items.items() if item.owner == owner]:
                del self.items[key]

    def stats(self) -> dict:
        with self.lock:
            counts = dict(self.counts)
            entries = sum(isinstance(item, Entry) for item in self.items.values())
            used = sum(item.nbytes for item in self.items.values())
            features = len(self.items) - entries
        lookups = counts["lookups"]
        return {"entries": entries, "feature_entries": features, "bytes": used, "max_bytes": self.max_bytes,
                **counts, "hit_rate": round(counts["hits"] / lookups, 4) if lookups else None,
                "token_hit_rate": (round(counts["cached_tokens"] / counts["prompt_tokens"], 4)
                                   if counts["prompt_tokens"] else None)}


@dataclass
class PromptReuse:
    """One request's use of the cache: the prefix it reuses, the features it needs, and how
    its own result is stored. Variants bring their kv form and their vision encoder."""

    cache: PromptCache
    owner: str
    keys: np.ndarray
    items: list[MediaItem]
    reused: int  # prompt positions whose key/value cache comes from ``entry``
    entry: Entry | None
    tile: int | None  # the variant's prefill tile (None: no key/value reuse, features only)

    @classmethod
    def plan(cls, cache: PromptCache, owner: str, batch: dict[str, Any], merge_size: int,
             tile: int | None) -> PromptReuse:
        """Look a one-prompt batch up."""
        items = media_items(batch, merge_size, digests=True)
        types = batch.get("mm_token_type_ids")
        keys = prompt_keys(_numpy(batch["input_ids"]), None if types is None else _numpy(types), items)
        reused, entry = (0, None)
        if tile:  # a tile of the prompt is always prefilled: its last position's logits give the first token
            reused, entry = cache.longest_prefix(owner, keys, limit=len(keys) - tile, tile=tile)
        return cls(cache, owner, keys, items, reused, entry, tile)

    def media_rows(self, mm_token_type_ids: np.ndarray, encode: Callable[[MediaItem], Any]) -> list:
        """Feature rows for the media placeholders at positions >= ``reused``, in prompt order,
        as pieces to concatenate: each item's features from the cache, or ``encode(item)`` (then stored)."""
        first_row = int((_numpy(mm_token_type_ids).reshape(-1)[:self.reused] != 0).sum())
        pieces, start = [], 0
        for item in self.items:
            if start + item.rows > first_row:
                features = self.cache.features(self.owner, item.digest)
                if features is None:
                    features = encode(item)
                    self.cache.add_features(self.owner, item.digest, features, int(features.nbytes))
                pieces.append(features[max(0, first_row - start):])
            start += item.rows
        return pieces

    def remember(self, kv_of: Callable[[int], list]) -> None:
        """Store what of this generation a later prompt can reuse: ``kv_of(n)`` gives a copy of the
        first n positions of its cache. The prompt's rest ran as one run from ``reused`` (a multiple
        of the tile), so its whole tiles are exact; the reply's tokens ran one row at a time and
        are not (nor would a history that holds only the answer match them), so they are not kept."""
        if self.tile is None:
            return
        exact = self.reused + (len(self.keys) - self.reused) // self.tile * self.tile
        if exact:
            kv = kv_of(exact)
            self.cache.add_entry(self.owner, self.keys[:exact], kv, sum(int(part.nbytes) for part in kv))
