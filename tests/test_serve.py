"""`glm4v-edge serve` (OpenAI-compatible, real HTTP in a subprocess) and the remote variant that talks to it."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from glm4v_edge.demo.examples import load_examples
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.messages import user_message
from glm4v_edge.runtime.registry import load_variant
from glm4v_edge.runtime.variant import Sampling, collect
from glm4v_edge.thinking import parse_reply

EXAMPLES = load_examples()


def health(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.files[0].stem)
def test_remote_variant_streams_the_right_answer_with_thinking(tiny_server, example):
    remote = load_variant("remote", url=tiny_server)
    assert remote.served_model == "torch-fp32"
    media = {"video": example.files[0]} if example.files[0].suffix == ".mp4" else {"images": list(example.files)}
    result = collect(remote.generate([user_message(example.question, **media)], max_new_tokens=128,
                                     sampling=Sampling.greedy()))
    assert result.reply.final_answer == example.answer
    assert result.reply.thinking
    assert len(result.token_ids) > 1  # streamed in many chunks, not one


def test_openai_client_without_streaming_gets_the_raw_reply(tiny_server):
    example = EXAMPLES[0]
    url = "data:image/png;base64," + base64.b64encode(example.files[0].read_bytes()).decode()
    client = openai.OpenAI(base_url=tiny_server, api_key="unused")
    completion = client.chat.completions.create(
        model="torch-fp32", temperature=0, max_tokens=128,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": example.question}]}],
    )
    reply = parse_reply(completion.choices[0].message.content)
    assert reply.final_answer == example.answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 1


def test_thinking_budget_zero_answers_directly(tiny_server):
    remote = load_variant("remote", url=tiny_server)
    example = EXAMPLES[0]
    result = collect(remote.generate([user_message(example.question, images=list(example.files))],
                                     max_new_tokens=64, sampling=Sampling.greedy(), thinking_budget=0))
    assert result.reply.thinking == ""
    assert result.reply.final_answer


@pytest.mark.parametrize("content, status, fragment", [
    # The unreadable image is named by its place in the request, not the server's temporary file.
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}},
      {"type": "text", "text": "What is this?"}], 400, "not an image Pillow can read: messages[0].content[0]"),
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], 400, "data URL"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}], 400, "invalid base64"),
    ([{"type": "input_audio", "input_audio": {}}], 400, "unsupported content part"),
])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(tiny_server, content, status, fragment):
    client = openai.OpenAI(base_url=tiny_server, api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="torch-fp32", messages=[{"role": "user", "content": content}])
    assert raised.value.status_code == status
    assert fragment in raised.value.message
    assert health(tiny_server)["running"] == 0
    ok = client.chat.completions.create(model="torch-fp32", messages=[{"role": "user", "content": "Hello"}],
                                        max_tokens=8)
    assert ok.choices[0].message.content is not None


@pytest.mark.parametrize("body, fragment", [
    ({"messages": []}, "at least one message"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -5}, "max_tokens must be at least 1"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 0}, "max_completion_tokens must be"),
])
def test_requests_openai_refuses_are_a_400(tiny_server, body, fragment):
    request = urllib.request.Request(tiny_server + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    message = json.loads(raised.value.read())["error"]["message"]
    assert fragment in message and "\n" not in message


def test_a_client_resending_its_history_reuses_the_prompt(tiny_server):
    """No session id: the server finds the earlier turn's prefix (image included) in its cache and
    reports it as OpenAI does; the reply is the one a cold server gives (tests/test_prompt_cache.py)."""
    example = EXAMPLES[0]
    url = "data:image/png;base64," + base64.b64encode(example.files[0].read_bytes()).decode()
    client = openai.OpenAI(base_url=tiny_server, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": example.question}]}]
    before = health(tiny_server)["prompt_cache"]
    first = client.chat.completions.create(model="torch-fp32", messages=messages, max_tokens=64, temperature=0)
    answer = parse_reply(first.choices[0].message.content).answer
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Are you sure?"}]
    chunks = list(client.chat.completions.create(model="torch-fp32", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens // 16 * 16  # torch's tile: 16
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    after = health(tiny_server)["prompt_cache"]
    assert after["hits"] > before["hits"] and after["entries"] >= 1 and 0 < after["bytes"] <= after["max_bytes"]
    assert 0 < after["hit_rate"] <= 1


def test_unknown_model_is_404(tiny_server):
    client = openai.OpenAI(base_url=tiny_server, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="torch-fp32"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


def test_remote_errors_are_one_line():
    with pytest.raises(Glm4vEdgeError, match="cannot list models"):
        load_variant("remote", url="http://127.0.0.1:9/v1")  # nothing listens on the discard port
    with pytest.raises(Glm4vEdgeError, match="needs an endpoint"):
        load_variant("remote")


def test_stop_ends_a_remote_generation_early(rambling_server):
    remote = load_variant("remote", url=rambling_server)
    stop = threading.Event()
    received = 0
    for _ in remote.generate([user_message("Talk.")], max_new_tokens=3000, sampling=Sampling.greedy(), stop=stop):
        received += 1
        if received == 5:
            stop.set()
    assert received == 5
    # The tiny_server ended that generation (its slot is free) long before the 3000-token limit.
    for _ in range(100):
        state = health(rambling_server)
        if state["running"] == 0:
            break
        threading.Event().wait(0.1)
    assert state["running"] == 0
    assert state["last_completion_tokens"] < 3000
    follow_up = collect(remote.generate([user_message("Again.")], max_new_tokens=4, sampling=Sampling.greedy()))
    assert len(follow_up.token_ids) >= 1


def test_usage_as_openai_clients_read_it(tiny_server):
    client = openai.OpenAI(base_url=tiny_server, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": EXAMPLES[0].question}]
    whole = client.chat.completions.create(model="torch-fp32", messages=messages, max_tokens=16, temperature=0)
    usage = whole.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(client.chat.completions.create(model="torch-fp32", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    counts = {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include=counts) == usage.model_dump(include=counts)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_a_continued_assistant_message_is_continued(tiny_server):
    """vLLM's continuation fields: the reply resumes the final assistant message."""
    client = openai.OpenAI(base_url=tiny_server, api_key="unused", max_retries=0)
    example = EXAMPLES[0]
    url = "data:image/png;base64," + base64.b64encode(example.files[0].read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": example.question}]},
                {"role": "assistant", "content": "<think></think><answer>"}]
    completion = client.chat.completions.create(
        model="torch-fp32", messages=messages, max_tokens=32, temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False})
    text = completion.choices[0].message.content
    assert "<think>" not in text and example.answer in text
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt"):
        client.chat.completions.create(model="torch-fp32", messages=messages,
                                       extra_body={"continue_final_message": True})


@pytest.mark.parametrize("budget", [0, 3])
def test_remote_thinking_budget_is_kept_by_the_client(tiny_server, budget):
    """The remote variant never sends a budget (vLLM would drop it): it counts thinking tokens from
    the stream and continues the message with </think><answer> itself."""
    from glm4v_edge.runtime.remote_variant import request_options

    assert "thinking_budget" not in str(request_options(Sampling.greedy()))
    remote = load_variant("remote", url=tiny_server)
    example = EXAMPLES[1]
    events = list(remote.generate([user_message(example.question, images=list(example.files))], max_new_tokens=64,
                                  sampling=Sampling.greedy(), thinking_budget=budget))
    result = collect(iter(events))
    assert result.reply.thinking_closed and result.reply.final_answer
    assert [event.text for event in events if event.forced] == (
        ["<think></think><answer>"] if budget == 0 else ["</think><answer>"])
    thinking_events = [event for event in events if any(piece.channel == "thinking" for piece in event.pieces)]
    assert len(thinking_events) == budget
    assert events[-1].prompt_tokens > 0  # usage reported per chunk by the tiny_server


def test_a_non_streaming_client_that_leaves_stops_its_generation(rambling_server):
    client = openai.OpenAI(base_url=rambling_server, api_key="unused", max_retries=0, timeout=2.0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="torch-fp32", messages=[{"role": "user", "content": "Talk."}],
                                       max_tokens=3000)
    for _ in range(100):
        state = health(rambling_server)
        if state["running"] == 0:
            break
        threading.Event().wait(0.1)
    assert state["running"] == 0 and state["last_completion_tokens"] < 3000
