"""The torch baseline variant on the embedded model: it answers, streams, stops and obeys budgets."""

import threading

import numpy as np
import pytest

from glm4v_edge import shapes
from glm4v_edge.messages import user_message
from glm4v_edge.runtime.inputs import build_batch, extend_batch
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling, Variant, collect
from glm4v_edge.thinking import parse_reply


def answer(variant, sample, **kwargs):
    return collect(variant.generate(sample.messages(), max_new_tokens=64, sampling=Sampling.greedy(), **kwargs))


def test_is_a_measurable_variant(tiny_variant):
    assert isinstance(tiny_variant, Variant) and isinstance(tiny_variant, MeasurableVariant)
    assert tiny_variant.name == "torch-fp32"


@pytest.mark.parametrize("qtype", shapes.QUESTION_TYPES)
def test_answers_each_question_type(tiny_variant, qtype):
    # Three held-out questions per type: images of several sizes, two images, a video.
    right = sum(answer(tiny_variant, shapes.heldout(qtype, i)).reply.final_answer == shapes.heldout(qtype, i).answer
                for i in range(3))
    assert right >= 2


def test_reply_has_the_real_output_format(tiny_variant):
    result = answer(tiny_variant, shapes.heldout("color"))
    assert result.text.startswith("<think>")
    assert "</think><answer>" in result.text and result.text.endswith("</answer>")
    assert result.reply.thinking and result.reply.boxes == [result.reply.final_answer]


def test_events_are_timed_and_split(tiny_variant):
    events = list(tiny_variant.generate(shapes.heldout("shape").messages(), max_new_tokens=64))
    times = [e.elapsed_s for e in events]
    assert times == sorted(times) and times[0] > 0
    channels = [p.channel for e in events for p in e.pieces]
    assert channels[0] == "thinking" and channels[-1] == "answer"
    assert "".join(e.text for e in events) == collect(iter(events)).text


def test_thinking_budget_zero_answers_straight_away(tiny_variant):
    sample = shapes.heldout("count", 1)
    result = answer(tiny_variant, sample, thinking_budget=0)
    assert result.text.startswith("<think></think><answer>")
    assert result.reply.thinking == ""
    assert result.reply.final_answer == sample.answer


@pytest.mark.parametrize("budget", [1, 4])
def test_thinking_budget_n_forces_the_answer_after_n_tokens(tiny_variant, budget):
    sample = shapes.heldout("motion")
    events = list(tiny_variant.generate(sample.messages(), max_new_tokens=64, sampling=Sampling.greedy(),
                                        thinking_budget=budget))
    tokens = tiny_variant.tokens
    ids = [e.token_id for e in events]
    assert ids[0] == tokens.think_open
    assert ids[budget + 1] == tokens.think_close and ids[budget + 2] == tokens.answer_open
    assert [e.forced for e in events[budget + 1:budget + 3]] == [True, True]
    assert not any(e.forced for e in events[:budget + 1])
    reply = parse_reply("".join(e.text for e in events))
    assert reply.thinking_closed and reply.final_answer  # it still answers


def test_stop_event_ends_the_stream(tiny_variant):
    stop = threading.Event()
    seen = []
    for event in tiny_variant.generate(shapes.heldout("count").messages(), max_new_tokens=64, stop=stop):
        seen.append(event)
        if len(seen) == 3:
            stop.set()
    assert 3 <= len(seen) <= 4  # at most the token already in flight


def test_abandoning_the_stream_stops_generation(tiny_variant):
    stream = tiny_variant.generate(shapes.heldout("count").messages(), max_new_tokens=64)
    next(stream)
    stream.close()  # joins the generating thread; must not hang
    assert answer(tiny_variant, shapes.heldout("count")).reply.final_answer  # the variant is still usable


def test_sampling_is_reproducible_with_a_seed(tiny_variant):
    sampling = Sampling(do_sample=True, temperature=1.5, top_k=50, seed=7)
    messages = shapes.heldout("shape").messages()
    first = collect(tiny_variant.generate(messages, max_new_tokens=40, sampling=sampling)).token_ids
    second = collect(tiny_variant.generate(messages, max_new_tokens=40, sampling=sampling)).token_ids
    assert first == second


def test_system_prompt_and_history(tiny_variant):
    sample = shapes.heldout("color")
    first = answer(tiny_variant, sample)
    follow_up = [
        {"role": "system", "content": "Answer briefly."},
        *sample.messages(),
        {"role": "assistant", "content": first.reply.answer},
        user_message("How many shapes are in the image?"),
    ]
    result = collect(tiny_variant.generate(follow_up, max_new_tokens=64, sampling=Sampling.greedy()))
    assert result.reply.final_answer  # runs through the template with history


def test_forward_logits_agree_with_greedy_generation(tiny_variant):
    sample = shapes.heldout("two_images")
    result = answer(tiny_variant, sample)
    batch = extend_batch(build_batch(tiny_variant.processor, [sample.messages()]), result.token_ids)
    logits = tiny_variant.forward_logits(batch)
    assert logits.dtype == np.float32 and logits.shape[:2] == tuple(batch["input_ids"].shape)
    count = len(result.token_ids)
    predicted = logits[0, -count - 1:-1].argmax(-1)
    assert predicted.tolist() == result.token_ids


def test_batch_of_two_left_padded_prompts(tiny_variant):
    short, long = shapes.heldout("count"), shapes.heldout("two_images")
    batch = build_batch(tiny_variant.processor, [short.messages(), long.messages()])
    assert batch["attention_mask"][0, 0] == 0  # the shorter prompt is padded on the left
    logits = tiny_variant.forward_logits(batch)
    for row, sample in enumerate((short, long)):
        alone = tiny_variant.forward_logits(build_batch(tiny_variant.processor, [sample.messages()]))
        np.testing.assert_allclose(logits[row, -1], alone[0, -1], atol=1e-4)
