"""The variants a demo offers, loaded on first use and kept while they fit a memory budget
together with the prompt cache they share."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.machine import resident_bytes
from glm4v_edge.names import REMOTE
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.runtime.prompt_cache import PromptCache
from glm4v_edge.runtime.registry import built_variants, load_from, missing_packages
from glm4v_edge.runtime.variant import MeasurableVariant, Variant

BASELINE = "torch"  # the checkpoint in transformers: fp32 on CPU, bf16 on CUDA
WAIT_POLL_S = 0.1  # how often a request waiting for a slot looks at its stop event


class StoppedWhileWaiting(Exception):
    """Stop was pressed before the request got a slot: it never ran."""
PREFERRED_DEFAULT = "onnx-q4"  # the fastest CPU variant, when the artifacts hold it


@dataclass
class Loaded:
    variant: Variant
    load_s: float
    resident_bytes: int  # what loading it added to this process's resident memory
    users: int = 0  # generations running on it now; a variant in use is never evicted


class VariantCatalog:
    """Name -> variant. ``use(name)`` loads once, bounds concurrent generations per variant,
    and evicts the least recently used idle variants when the memory budget is exceeded."""

    def __init__(self, settings: DemoSettings):
        self.settings = settings
        # Read once: every request checks a name against it. A variant whose packages are not
        # installed here is not offered (a Space installs requirements.txt, not every extra).
        offered = self._offered()
        self.unavailable = {name: reason for name in offered if (reason := missing_packages(name))}
        self.available = [name for name in offered if name not in self.unavailable]
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.lock = threading.Lock()  # guards ``loaded``
        self.load_lock = threading.Lock()
        self.slots: dict[str, threading.BoundedSemaphore] = {}
        # One cache for every session and variant: a user's next turn, and a second user asking
        # about the same example image, start from what was computed before.
        self.prompt_cache = PromptCache.from_gb(settings.prompt_cache_gb)

    def names(self) -> list[str]:
        return list(self.available)

    def _offered(self) -> list[str]:
        names = [BASELINE]
        if self.settings.artifacts is not None:
            names += built_variants(self.settings.artifacts)
        if self.settings.remote_url:
            names.append(REMOTE)
        return names

    def default_name(self) -> str:
        names = self.names()
        if self.settings.variant is not None:
            if self.settings.variant not in names:
                raise Glm4vEdgeError(f"variant {self.settings.variant!r} is not available here; "
                                     f"choose one of: {', '.join(names)}")
            return self.settings.variant
        return PREFERRED_DEFAULT if PREFERRED_DEFAULT in names else names[0]

    def load(self, name: str, progress: Progress = SILENT) -> Loaded:
        """The loaded variant ``name`` (loading it at most once, however many sessions ask; a hub
        build's files for it are downloaded then, reported to ``progress``)."""
        if name not in self.available:
            raise Glm4vEdgeError(f"unknown variant {name!r}; choose one of: {', '.join(self.available)}")
        with self.load_lock:  # one load at a time: each one's resident memory is measured alone
            with self.lock:
                if name in self.loaded:
                    self.loaded.move_to_end(name)
                    return self.loaded[name]
            started, before = time.perf_counter(), resident_bytes() or 0
            variant = load_from(name, self.settings.model, self.settings.artifacts, remote_url=self.settings.remote_url,
                                remote_model=self.settings.remote_model, device=self.settings.device,
                                threads=self.settings.threads, prompt_cache=self.prompt_cache, progress=progress)
            # What loading added to this process (libraries included), at least what it maps from disk.
            added = max(0, (resident_bytes() or 0) - before)
            entry = Loaded(variant, time.perf_counter() - started,
                           max(added, variant.artifact_bytes if isinstance(variant, MeasurableVariant) else 0))
            with self.lock:
                self.loaded[name] = entry
                self._evict(keep=name)
            return entry

    def cache_bytes(self) -> int:
        return self.prompt_cache.nbytes if self.prompt_cache is not None else 0

    def _evict(self, keep: str) -> None:
        """Drop idle variants (and their cached prompts), oldest use first, until the loaded ones'
        resident memory plus the prompt cache fits the budget."""
        budget = self.settings.memory_budget_bytes
        for name in list(self.loaded):
            if sum(e.resident_bytes for e in self.loaded.values()) + self.cache_bytes() <= budget:
                return
            if name != keep and self.loaded[name].users == 0:
                evicted = self.loaded.pop(name).variant
                if self.prompt_cache is not None and hasattr(evicted, "cache_owner"):
                    self.prompt_cache.forget(evicted.cache_owner)

    def _slot(self, name: str) -> threading.BoundedSemaphore:
        with self.lock:
            return self.slots.setdefault(name, threading.BoundedSemaphore(self.settings.concurrency_per_variant))

    def busy(self, name: str) -> bool:
        """Whether a generation on ``name`` would wait for a slot now."""
        slot = self._slot(name)
        if slot.acquire(blocking=False):
            slot.release()
            return False
        return True

    @contextmanager
    def use(self, name: str, stop: threading.Event | None = None) -> Iterator[Variant]:
        """A variant for one generation; waits while ``concurrency_per_variant`` others run on it.
        This is the demo's one queue: a request waiting here can be stopped (``StoppedWhileWaiting``)."""
        slot = self._slot(name)
        while not slot.acquire(timeout=WAIT_POLL_S):
            if stop is not None and stop.is_set():
                raise StoppedWhileWaiting(name)
        try:
            entry = self.load(name)
            with self.lock:
                entry.users += 1
            try:
                yield entry.variant
            finally:
                with self.lock:
                    entry.users -= 1
        finally:
            slot.release()
