"""The prompt cache changes only the time: multi-turn conversations give token for token the same
replies with it as without it (torch, onnx-fp32, onnx-q4), and the store keeps to its budget."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from glm4v_edge import shapes
from glm4v_edge.messages import answer_message, user_message
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.onnx_variant import OnnxVariant
from glm4v_edge.runtime.prompt_cache import PromptCache, media_items, prompt_keys
from glm4v_edge.runtime.registry import load_variant
from glm4v_edge.runtime.variant import Sampling, collect
from glm4v_edge.thinking import Reply, history_text

MAX_NEW = 48


@dataclass
class Conversation:
    """Turns as the demo sends them: each user turn, with the history of answers (never thinking)."""

    turns: list[dict]  # user messages
    system: str | None = None
    thinking_budget: int | None = None
    sampling: Sampling = field(default_factory=Sampling.greedy)
    stop_after: int | None = None  # the reader closes the first turn's stream after this many tokens


def run(variant, conversation: Conversation) -> list[tuple[list[int], int | None]]:
    """Each turn's reply token ids and how many prompt tokens it reused."""
    history = [{"role": "system", "content": conversation.system}] if conversation.system else []
    replies = []
    for number, turn in enumerate(conversation.turns):
        history = [*history, turn]
        events = variant.generate(history, max_new_tokens=MAX_NEW, sampling=conversation.sampling,
                                  thinking_budget=conversation.thinking_budget)
        taken = []
        for event in events:
            taken.append(event)
            if number == 0 and len(taken) == conversation.stop_after:
                events.close()  # as a reader who pressed Stop: the stream ends between two tokens
                break
        pieces = [piece for event in taken for piece in event.pieces]
        history.append(answer_message(history_text(Reply.from_pieces(pieces))))
        replies.append(([event.token_id for event in taken], taken[0].cached_tokens if taken else None))
    return replies


def follow_ups(*questions: str) -> list[dict]:
    return [user_message(question) for question in questions]


COUNT, COLOR = shapes.heldout("count"), shapes.heldout("color")
CONVERSATIONS = {
    "one image": Conversation([*COUNT.messages(), *follow_ups("What color is the triangle?",
                                                             "How many shapes are in the image?")]),
    "several images": Conversation([*shapes.heldout("two_images").messages(), *COLOR.messages(),
                                    *follow_ups("How many shapes are in the image?")]),
    "a video": Conversation([*shapes.heldout("motion").messages(), *follow_ups("Which way is it moving?")]),
    "budget 0": Conversation([*COUNT.messages(), *follow_ups("And now?")], thinking_budget=0),
    "budget 3": Conversation([*COUNT.messages(), *follow_ups("And now?")], thinking_budget=3),
    "seeded sampling": Conversation([*COLOR.messages(), *follow_ups("Are you sure?")],
                                    sampling=Sampling(do_sample=True, temperature=1.3, top_p=0.95, seed=7)),
    "stopped mid-reply": Conversation([*COUNT.messages(), *follow_ups("Go on.")], thinking_budget=0, stop_after=3),
    "system prompt": Conversation([*COLOR.messages(), *follow_ups("Why?")], system="Answer briefly."),
}


def with_cache(variant, cache: PromptCache | None):
    variant.prompt_cache = cache
    return variant


def assert_same_replies(variant, conversation: Conversation) -> PromptCache:
    without = run(with_cache(variant, None), conversation)
    cache = PromptCache(2**30)
    reused = run(with_cache(variant, cache), conversation)
    with_cache(variant, None)
    assert [ids for ids, _ in reused] == [ids for ids, _ in without]
    assert reused[0][1] == 0 and all(cached > 0 for _, cached in reused[1:])  # later turns did reuse
    return cache


@pytest.fixture(scope="module")
def torch_variant():
    return load_variant("torch-fp32")  # its own instance: the session's tiny_variant keeps no cache


@pytest.fixture(scope="module")
def onnx_variants(artifacts):
    return {dtype: OnnxVariant(artifacts, dtype=dtype, device="cpu") for dtype in ("fp32", "q4", "fp16")}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_torch_replies_are_the_same_with_the_cache(torch_variant, name):
    assert_same_replies(torch_variant, CONVERSATIONS[name])


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_onnx_replies_are_the_same_with_the_cache(onnx_variants, dtype, name):
    assert_same_replies(onnx_variants[dtype], CONVERSATIONS[name])


@pytest.mark.parametrize("which", ["torch", "onnx-q4"])
def test_a_continued_assistant_message_is_the_same_with_the_cache(torch_variant, onnx_variants, which):
    """``continue_final_message`` (serve's, vLLM's): the prompt ends inside the assistant's turn."""
    variant = torch_variant if which == "torch" else onnx_variants["q4"]
    continued = [*COUNT.messages(), {"role": "assistant", "content": "<think>I see"}]
    expected = collect(with_cache(variant, None).generate(continued, max_new_tokens=MAX_NEW,
                                                          continue_final_message=True)).token_ids
    with_cache(variant, PromptCache(2**30))
    collect(variant.generate(COUNT.messages(), max_new_tokens=MAX_NEW))
    events = list(variant.generate(continued, max_new_tokens=MAX_NEW, continue_final_message=True))
    with_cache(variant, None)
    assert [event.token_id for event in events] == expected and events[0].cached_tokens > 0


def test_a_follow_up_prefills_only_what_is_new(onnx_variants):
    cache = assert_same_replies(onnx_variants["fp32"], CONVERSATIONS["one image"])
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["lookups"] == 3
    # The image was encoded once: later turns took all of it from the reused prefix.
    assert stats["feature_lookups"] == 1 and stats["feature_hits"] == 0
    # Turn 2 reused the whole first prompt (the image included): at least its media tokens.
    first = build_batch(onnx_variants["fp32"].processor, [COUNT.messages()])
    replies = run(with_cache(onnx_variants["fp32"], PromptCache(2**30)), CONVERSATIONS["one image"])
    assert replies[1][1] >= first["input_ids"].shape[1] - 1


def test_features_are_reused_where_the_prompt_diverged_before_the_image(onnx_variants):
    """An edited system prompt changes the prefix before the image: the KV cannot be reused, the
    image's features still are."""
    variant = onnx_variants["fp32"]
    first = [{"role": "system", "content": "Answer briefly."}, *COLOR.messages()]
    edited = [{"role": "system", "content": "Think it over."}, *COLOR.messages()]
    expected = collect(with_cache(variant, None).generate(edited, max_new_tokens=MAX_NEW,
                                                          sampling=Sampling.greedy())).token_ids
    cache = PromptCache(2**30)
    collect(with_cache(variant, cache).generate(first, max_new_tokens=MAX_NEW, sampling=Sampling.greedy()))
    events = list(variant.generate(edited, max_new_tokens=MAX_NEW, sampling=Sampling.greedy()))
    with_cache(variant, None)
    assert [event.token_id for event in events] == expected
    image_start = int(np.flatnonzero(build_batch(variant.processor, [edited])["mm_token_type_ids"][0])[0])
    assert events[0].cached_tokens < image_start
    assert cache.stats()["feature_hits"] == 1


def test_two_different_images_never_match(torch_variant, tiny_processor):
    """Same question, same placeholder ids, different pixels: the keys part at the image."""
    question = "How many shapes are in the image?"
    first, second = (build_batch(tiny_processor, [[user_message(question, images=[sample.images[0]])]])
                     for sample in (COUNT, COLOR))
    keys = []
    for batch in (first, second):
        items = media_items(batch, 2, digests=True)
        keys.append(prompt_keys(batch["input_ids"].numpy(), batch["mm_token_type_ids"].numpy(), items))
    image_start = int(np.flatnonzero(first["mm_token_type_ids"][0])[0])
    assert (keys[0][:image_start] == keys[1][:image_start]).all() and keys[0][image_start] != keys[1][image_start]
    # And through generate: the second image's reply is its own.
    messages = [[user_message(question, images=[sample.images[0]])] for sample in (COUNT, COLOR)]
    expected = collect(with_cache(torch_variant, None).generate(messages[1], max_new_tokens=MAX_NEW)).token_ids
    with_cache(torch_variant, PromptCache(2**30))
    collect(torch_variant.generate(messages[0], max_new_tokens=MAX_NEW))
    events = list(torch_variant.generate(messages[1], max_new_tokens=MAX_NEW))
    with_cache(torch_variant, None)
    assert [event.token_id for event in events] == expected and events[0].cached_tokens <= image_start


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_an_identical_request_reuses_all_but_a_tile_of_the_prompt(onnx_variants, dtype):
    """As far as the precision's prefill tile allows (q4: 16 positions, fp32: 2)."""
    variant = with_cache(onnx_variants[dtype], PromptCache(2**30))
    first = collect(variant.generate(COUNT.messages(), max_new_tokens=MAX_NEW))
    events = list(variant.generate(COUNT.messages(), max_new_tokens=MAX_NEW))
    with_cache(variant, None)
    assert [event.token_id for event in events] == first.token_ids
    tile = variant.prefill_tile
    assert events[0].cached_tokens == (events[0].prompt_tokens - tile) // tile * tile


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_a_prefill_split_at_the_tile_is_bit_exact(onnx_variants, dtype):
    """A prompt run in two parts split at a multiple of the prefill tile leaves exactly the cache
    one run leaves (MatMulNBits rounds the odd last row of a run differently: hence the tile)."""
    variant = onnx_variants[dtype]
    batch = variant._numpy_batch(build_batch(variant.processor, [COUNT.messages()]))
    length = batch["input_ids"].shape[1]
    positions, _ = variant._positions(batch)
    embeds, mask = variant.input_embeddings(batch), batch["attention_mask"]

    def split_cache(split: int) -> list[np.ndarray]:
        values, host = variant.new_cache(1, length + 1)
        variant.decode(embeds[:, :split], mask[:, :split], positions[:, :, :split], values, 1, in_place=True)
        variant.decode(embeds[:, split:], mask, positions[:, :, split:], values, 1, in_place=True)
        return [array[:, :, :length] for array in host]

    values, host = variant.new_cache(1, length + 1)
    variant.decode(embeds, mask, positions, values, 1, in_place=True)
    reference = [array[:, :, :length].copy() for array in host]
    split = (length - variant.prefill_tile) // variant.prefill_tile * variant.prefill_tile
    assert all(np.array_equal(a, b) for a, b in zip(split_cache(split), reference))


def test_concurrent_generations_on_one_entry_give_their_own_replies(onnx_variants):
    """Two users asking about the same image at once: both copy the entry, neither writes it."""
    variant = onnx_variants["fp32"]
    conversation = [*COUNT.messages(), answer_message("3"), user_message("What color is the triangle?")]
    expected = collect(with_cache(variant, None).generate(conversation, max_new_tokens=MAX_NEW)).token_ids
    cache = PromptCache(2**30)
    collect(with_cache(variant, cache).generate(COUNT.messages(), max_new_tokens=MAX_NEW))
    results = [None] * 4
    def ask(slot: int) -> None:  # noqa: E306
        results[slot] = collect(variant.generate(conversation, max_new_tokens=MAX_NEW)).token_ids
    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with_cache(variant, None)
    assert results == [expected] * len(results)
    assert cache.stats()["hits"] == len(results)


def test_a_failed_generation_leaves_no_entry(onnx_variants, monkeypatch):
    variant = with_cache(onnx_variants["fp32"], PromptCache(2**30))
    calls = {"steps": 0}
    real_step = OnnxVariant.step

    def failing_step(self, state, token_ids):
        calls["steps"] += 1
        if calls["steps"] == 3:
            raise RuntimeError("decoder failed")
        return real_step(self, state, token_ids)

    monkeypatch.setattr(OnnxVariant, "step", failing_step)
    with pytest.raises(RuntimeError, match="decoder failed"):
        collect(variant.generate(COUNT.messages(), max_new_tokens=MAX_NEW))
    stats = variant.prompt_cache.stats()
    with_cache(variant, None)
    assert stats["entries"] == 0  # its image features (complete when stored) may stay
    assert stats["feature_entries"] == 1


def test_entries_hold_the_graphs_own_dtype(onnx_variants):
    for dtype, expected in (("fp16", np.float16), ("fp32", np.float32)):
        cache = PromptCache(2**30)
        collect(with_cache(onnx_variants[dtype], cache).generate(COUNT.messages(), max_new_tokens=4))
        with_cache(onnx_variants[dtype], None)
        (entry,) = [item for item in cache.items.values() if hasattr(item, "kv")]
        assert {part.dtype for part in entry.kv} == {np.dtype(expected)}
        # The prompt's whole prefill tiles: the cache holds exactly the positions its keys name.
        prompt = len(build_batch(onnx_variants[dtype].processor, [COUNT.messages()])["input_ids"][0])
        tile = onnx_variants[dtype].prefill_tile
        assert {part.shape[2] for part in entry.kv} == {len(entry.keys)} == {prompt // tile * tile}


def test_the_budget_holds_and_the_least_recently_used_goes_first(onnx_variants):
    variant = onnx_variants["fp32"]
    probe = PromptCache(2**30)
    collect(with_cache(variant, probe).generate(COUNT.messages(), max_new_tokens=8))
    one = probe.nbytes  # one entry and one image's features
    cache = PromptCache(int(one * 2.5))
    with_cache(variant, cache)
    for sample in (COUNT, COLOR, shapes.heldout("shape")):
        collect(variant.generate(sample.messages(), max_new_tokens=8))
        assert cache.nbytes <= cache.max_bytes
    assert cache.longest_prefix(variant.cache_owner, prompt_keys_of(variant, COUNT.messages()), 10**6)[0] < 10
    assert cache.longest_prefix(variant.cache_owner, prompt_keys_of(variant, shapes.heldout("shape").messages()),
                                10**6)[0] > 10
    with_cache(variant, None)


def prompt_keys_of(variant, messages) -> np.ndarray:
    batch = build_batch(variant.processor, [messages])
    items = media_items(batch, 2, digests=True)
    return prompt_keys(batch["input_ids"].numpy(), batch["mm_token_type_ids"].numpy(), items)


def test_store_alone_evicts_extends_and_forgets():
    cache = PromptCache(1000)
    keys = np.arange(10, dtype=np.int64)
    cache.add_entry("a", keys[:4], [np.zeros(100, np.uint8)], 100)
    cache.add_entry("a", keys, [np.zeros(100, np.uint8)], 100)  # extends the first: it replaces it
    assert cache.stats()["entries"] == 1
    assert cache.longest_prefix("a", np.array([0, 1, 2, 9]), 10) == (3, cache.items[next(iter(cache.items))])
    assert cache.longest_prefix("b", keys, 10) == (0, None)  # another variant's entries are not offered
    cache.add_entry("a", keys + 100, [np.zeros(2000, np.uint8)], 2000)  # over the whole budget: not kept
    assert cache.stats()["entries"] == 1
    cache.add_features("a", b"x", np.zeros(950, np.uint8), 950)  # the older entry goes
    assert cache.stats()["entries"] == 0 and cache.nbytes == 950
    cache.forget("a")
    assert cache.nbytes == 0
    assert PromptCache.from_gb(0) is None and PromptCache.from_gb(0.5).max_bytes == 2**29
