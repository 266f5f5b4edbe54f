"""The Gradio demo end to end through gradio_client: answers, concurrency, stop, bad uploads.

The demo runs for real on a free loopback port; nothing of Gradio is mocked.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from glm4v_edge.demo.catalog import VariantCatalog
from glm4v_edge.demo.examples import load_examples
from glm4v_edge.demo.reply_view import THINKING_TITLE, ReplyView
from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.demo.ui import launch_demo
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.messages import answer_message, user_message
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.variant import Sampling, TokenEvent, collect
from glm4v_edge.thinking import ReplyParser, history_text
from tests.conftest import assert_one_line_error, run_cli
from tests.servers import free_port

EXAMPLES = load_examples()
SETTINGS = dict(thinking_budget=8192, max_new_tokens=256, temperature=0.0, top_p=1.0)


@pytest.fixture(scope="module")
def demo_url(rambling_server):
    settings = DemoSettings(remote_url=rambling_server, queue_size=16)
    port = free_port()
    demo = launch_demo(settings, port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def ask(client: Client, question: str, files=(), variant: str = "torch", **overrides):
    options = {**SETTINGS, **overrides}
    chat, _ = client.predict(
        {"text": question, "files": [handle_file(str(f)) for f in files]}, [], variant, "",
        options["thinking_budget"], options["max_new_tokens"], options["temperature"], options["top_p"],
        api_name="/chat",
    )
    return chat


def message_text(message: dict) -> str:
    """Gradio 6 hands a message's content back as a list of parts."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text") or "" for part in content)


def assistant_parts(chat: list[dict]) -> tuple[str, str]:
    """(thinking, answer) of the last reply as the chat shows it."""
    replies = [m for m in chat if m["role"] == "assistant"]
    thinking = [message_text(m) for m in replies if (m.get("metadata") or {}).get("title")]
    answers = [message_text(m) for m in replies if not (m.get("metadata") or {}).get("title")]
    return (thinking[-1] if thinking else ""), answers[-1]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.files[0].stem)
def test_examples_get_the_right_answer_and_thinking(demo_url, example):
    chat = ask(Client(demo_url, verbose=False), example.question, example.files)
    thinking, answer = assistant_parts(chat)
    assert thinking
    assert f"<mark>{example.answer}</mark>" in answer or answer.startswith(example.answer)
    assert "tokens/s" in answer and "torch-fp32" in answer  # the run's metrics, small under the answer


def test_four_clients_at_once_all_get_their_answer(demo_url):
    cases = EXAMPLES[:4]  # images only, one generation at a time per variant: three wait in the queue

    def one(example):
        return example, ask(Client(demo_url, verbose=False), example.question, example.files)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(one, cases, timeout=600))
    for example, chat in results:
        assert example.answer in assistant_parts(chat)[1]


def test_multi_turn_sends_back_answers_only(demo_url, tiny_variant):
    """The second turn's reply equals a direct generation whose history holds turn one's answer
    without its thinking (the embedded model was trained single-turn, so only equality is checked)."""
    client = Client(demo_url, verbose=False)
    first, second = EXAMPLES[0], EXAMPLES[1]
    ask(client, first.question, first.files)
    chat = ask(client, second.question, second.files)  # same session: the history goes back in

    turn_one = [user_message(first.question, images=list(first.files))]
    answer_one = history_text(collect(tiny_variant.generate(turn_one, max_new_tokens=256,
                                                            sampling=Sampling.greedy())).reply)
    history = [*turn_one, answer_message(answer_one), user_message(second.question, images=list(second.files))]
    expected = collect(tiny_variant.generate(history, max_new_tokens=256, sampling=Sampling.greedy()))
    shown, metrics = assistant_parts(chat)[1].split("<sub>")
    assert shown.replace("<mark>", "").replace("</mark>", "").strip() == expected.reply.answer
    # The second turn started from the first one's cache: the demo says how much of the prompt it reused.
    reused, prompt = map(int, re.search(r"(\d+) of (\d+) prompt tokens reused", metrics).groups())
    first_prompt = len(build_batch(tiny_variant.processor, [turn_one])["input_ids"][0])
    assert first_prompt // 16 * 16 <= reused < prompt  # torch reuses whole prefill tiles of 16 positions


def test_a_second_user_asking_about_the_same_example_reuses_its_prompt(demo_url):
    example = EXAMPLES[3]
    first = assistant_parts(ask(Client(demo_url, verbose=False), example.question, example.files))[1]
    second = assistant_parts(ask(Client(demo_url, verbose=False), example.question, example.files))[1]
    assert first.split("<sub>")[0] == second.split("<sub>")[0]
    reused, prompt = map(int, re.search(r"(\d+) of (\d+) prompt tokens reused", second).groups())
    assert reused == (prompt - 16) // 16 * 16  # all but the last of torch's prefill tiles (16 positions)


def test_stop_ends_generation_mid_reply(demo_url):
    client = Client(demo_url, verbose=False)
    job = client.submit({"text": "Talk.", "files": []}, [], "remote", "", 8192, 4000, 0.0, 1.0, api_name="/chat")
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 5 and time.monotonic() < deadline:  # a few streamed updates first
        time.sleep(0.1)
    assert not job.done()
    client.predict(api_name="/stop")
    chat, _ = job.result(timeout=120)
    _, answer = assistant_parts(chat)
    assert "stopped" in answer and "remote" in answer
    tokens = int(answer.rsplit(" tokens", 1)[0].rsplit("·", 1)[1])
    assert tokens < 4000


def test_stop_cancels_a_request_still_waiting_for_its_variant(demo_url):
    """One slot per variant: the second chat waits (and says so); Stop drops it before it runs."""
    first, second = Client(demo_url, verbose=False), Client(demo_url, verbose=False)
    running = first.submit({"text": "Talk.", "files": []}, [], "remote", "", 8192, 4000, 0.0, 1.0, api_name="/chat")
    deadline = time.monotonic() + 120
    while len(running.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = second.submit({"text": "Talk.", "files": []}, [], "remote", "", 8192, 4000, 0.0, 1.0, api_name="/chat")
    while not waiting.outputs() or "waiting for remote" not in str(waiting.outputs()[-1]):
        assert time.monotonic() < deadline, waiting.outputs()
        time.sleep(0.1)
    second.predict(api_name="/stop")
    chat, _ = waiting.result(timeout=60)
    assert not running.done()  # it stopped while the first still held the slot
    _, answer = assistant_parts(chat)
    assert "no tokens" in answer and "stopped" in answer
    first.predict(api_name="/stop")
    running.result(timeout=120)


@pytest.fixture
def bad_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    whole = EXAMPLES[0].files[0].read_bytes()
    corrupt.write_bytes(whole[:len(whole) // 2])  # cut off mid-stream
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    many = []
    for number in range(11):
        copy = tmp_path / f"image-{number}.png"
        shutil.copy(EXAMPLES[0].files[0], copy)
        many.append(copy)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing playable")
    motion = EXAMPLES[4].files[0]
    return {"empty": [empty], "corrupt": [corrupt], "text": [text], "eleven": many, "bad_video": [video],
            "two_videos": [motion, motion], "image_and_video": [EXAMPLES[0].files[0], motion]}


@pytest.mark.parametrize("case, fragment", [
    ("empty", "empty"), ("corrupt", "truncated or corrupt"),
    ("text", "[Ii]nvalid file type|unsupported file type"),  # Gradio checks file_types first
    ("eleven", "11 images"), ("bad_video", "cannot read video"), ("two_videos", "one video per message"),
    ("image_and_video", "images or videos, not both"),
])
def test_bad_uploads_are_an_error_message_and_the_server_keeps_serving(demo_url, bad_files, case, fragment):
    client = Client(demo_url, verbose=False)
    with pytest.raises(AppError, match=fragment) as raised:
        ask(client, "What is this?", bad_files[case])
    assert "/tmp/" not in str(raised.value)  # the file's name, not the server's paths
    example = EXAMPLES[0]
    assert example.answer in assistant_parts(ask(client, example.question, example.files))[1]


def test_a_path_outside_the_upload_cache_is_refused(demo_url):
    """A hand-made request naming a server file, past gradio_client (which would upload it)."""
    payload = {"data": [{"text": "What is this?", "files": [{"path": "/etc/hostname",
                                                             "meta": {"_type": "gradio.FileData"}}]},
                        [], "torch", "", 8192, 64, 0.0, 1.0]}
    with httpx.Client(base_url=demo_url, timeout=60) as http:
        event_id = http.post("gradio_api/call/chat", json=payload).json()["event_id"]
        stream = http.get(f"gradio_api/call/chat/{event_id}").text
    assert "event: error" in stream
    assert open("/etc/hostname").read().strip() not in stream.split("event: error", 1)[1]
    example = EXAMPLES[0]
    assert example.answer in assistant_parts(ask(Client(demo_url, verbose=False), example.question,
                                                 example.files))[1]


def events_for(text: str) -> list[TokenEvent]:
    parser = ReplyParser()
    return [TokenEvent(token_id=i, text=t, pieces=tuple(parser.feed(t)), elapsed_s=0.1 * (i + 1))
            for i, t in enumerate(text)]


def test_reply_view_collapses_thinking_when_the_answer_starts_and_marks_boxes():
    view = ReplyView("torch-fp32")
    reply = "<think>two shapes</think><answer>There are <|begin_of_box|>2<|end_of_box|> shapes.</answer>"
    cut = reply.index("<answer>")
    for event in events_for(reply[:cut]):
        view.add(event)
    assert view.messages()[0]["metadata"] == {"title": THINKING_TITLE, "status": "pending"}
    for event in events_for(reply[cut:]):
        view.add(event)
    view.finished = True
    thinking, answer = view.messages()
    assert thinking["content"] == "two shapes" and thinking["metadata"]["status"] == "done"
    assert answer["content"].startswith("There are <mark>2</mark> shapes.")
    assert "<sub>" in answer["content"]
    assert view.history_answer() == "There are 2 shapes."  # no thinking, no metrics, no tags


def test_catalog_loads_once_and_evicts_idle_variants_past_the_memory_budget(rambling_server):
    catalog = VariantCatalog(DemoSettings(remote_url=rambling_server, memory_budget_gb=1e-9))
    assert catalog.names() == ["torch", "remote"]
    assert catalog.default_name() == "torch"
    first = catalog.load("torch")
    assert catalog.load("torch") is first
    catalog.load("remote")
    assert list(catalog.loaded) == ["remote"]  # torch did not fit beside it and was idle


def test_the_prompt_cache_counts_in_the_memory_budget(rambling_server):
    catalog = VariantCatalog(DemoSettings(remote_url=rambling_server, memory_budget_gb=1.0))
    torch_variant = catalog.load("torch").variant
    assert torch_variant.prompt_cache is catalog.prompt_cache  # every loaded variant shares the demo's cache
    catalog.prompt_cache.add_features(torch_variant.cache_owner, b"image", np.zeros(1), nbytes=2**30 - 2**20)
    catalog.load("remote")
    assert list(catalog.loaded) == ["remote"]  # the cache filled the budget: idle torch went, and its entries
    assert catalog.cache_bytes() == 0


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM4V_EDGE_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("GLM4V_EDGE_MEMORY_GB", "2.5")
    monkeypatch.setenv("GLM4V_EDGE_PROMPT_CACHE_GB", "0")
    settings = DemoSettings.from_env(variant="torch")
    assert settings.artifacts == tmp_path and settings.memory_budget_bytes == int(2.5 * 2**30)
    assert settings.variant == "torch"
    assert settings.max_images == 10
    assert settings.prompt_cache_gb == 0
    assert VariantCatalog(dataclasses.replace(settings, artifacts=None)).prompt_cache is None  # 0 turns it off


def test_a_pdf_becomes_page_images(demo_url, tmp_path):
    from PIL import Image

    example = EXAMPLES[2]  # two images: "Which color is the shape shown in the second image?"
    pages = [Image.open(path).convert("RGB") for path in example.files]
    pdf = tmp_path / "two-pages.pdf"
    pages[0].save(pdf, save_all=True, append_images=pages[1:])
    chat = ask(Client(demo_url, verbose=False), example.question, [pdf])
    shown = [part for m in chat if m["role"] == "user" for part in m["content"] if part.get("type") == "file"]
    assert [Path(part["file"]).name for part in shown] == ["page-1.png", "page-2.png"]
    assert example.answer in assistant_parts(chat)[1]

    too_long = tmp_path / "eleven-pages.pdf"
    pages[0].save(too_long, save_all=True, append_images=pages[:1] * 10)
    with pytest.raises(AppError, match="11 pages"):
        ask(Client(demo_url, verbose=False), example.question, [too_long])


def test_catalog_offers_what_a_build_holds_and_starts_on_q4(tmp_path):
    """The picker lists the manifest's ONNX precisions and GPTQ checkpoints (loading them is
    tested with the ONNX and GPTQ variants); a missing artifacts folder is a one-line error."""
    (tmp_path / "manifest.json").write_text(
        '{"dtypes": ["fp32", "q4"], "variants": {"gptq-int4": {"folder": "gptq-int4"}}, "files": {}}')
    catalog = VariantCatalog(DemoSettings(artifacts=tmp_path))
    assert catalog.names() == ["torch", "onnx-fp32", "onnx-q4", "gptq-int4"]
    assert catalog.default_name() == "onnx-q4"
    with pytest.raises(Glm4vEdgeError, match="not available here"):
        VariantCatalog(DemoSettings(artifacts=tmp_path, variant="onnx-int8")).default_name()
    with pytest.raises(Glm4vEdgeError, match="artifacts folder not found"):
        VariantCatalog(DemoSettings(artifacts=tmp_path / "missing")).names()


def test_catalog_hides_variants_whose_packages_are_missing(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(
        '{"dtypes": ["q4"], "variants": {"gptq-int4": {"folder": "gptq-int4"}}, "files": {}}')
    monkeypatch.setitem(sys.modules, "gptqmodel", None)  # as on a Space without the gptq extra
    catalog = VariantCatalog(DemoSettings(artifacts=tmp_path))
    assert catalog.names() == ["torch", "onnx-q4"]
    assert catalog.unavailable == {"gptq-int4": "needs gptqmodel: pip install 'glm4v-edge[gptq]'"}
    with pytest.raises(Glm4vEdgeError, match="unknown variant 'gptq-int4'"):
        catalog.load("gptq-int4")


def test_memory_budget_counts_resident_memory_not_disk_size(artifacts):
    """In a fresh process (as a Space starts) the 6.6 MB embedded model costs hundreds of MiB
    resident; the catalog counts that, and evicts the idle variant when the next one loads."""
    script = f"""
from glm4v_edge.demo.catalog import VariantCatalog
from glm4v_edge.demo.settings import DemoSettings
catalog = VariantCatalog(DemoSettings(artifacts={str(artifacts)!r}, memory_budget_gb=0.001))
torch_entry = catalog.load("torch")
print(torch_entry.resident_bytes, torch_entry.variant.artifact_bytes)
catalog.load("onnx-q4")
print(list(catalog.loaded))
"""
    probe = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.strip().splitlines()
    resident, on_disk = map(int, lines[-2].split())
    assert on_disk < 10 * 2**20 and resident > 100 * 2**20, (resident, on_disk)
    assert lines[-1] == "['onnx-q4']"  # torch was idle and over the budget: evicted


@pytest.mark.parametrize("args, fragment", [
    (("demo", "--artifacts", "no-such-folder"), "artifacts folder not found"),
    (("demo", "--variant", "onnx-q4"), "not available here"),
    (("serve", "--variant", "onnx-q4"), "needs an artifacts folder"),
    (("chat", "Hi", "--variant", "remote"), "needs an endpoint URL"),
])
def test_cli_refuses_bad_settings_in_one_line(args, fragment, monkeypatch):
    monkeypatch.delenv("GLM4V_EDGE_REMOTE_URL", raising=False)
    assert_one_line_error(run_cli(*args), fragment)


def test_uploads_over_the_size_limit_are_refused(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    demo = launch_demo(DemoSettings(max_file_mb=1), port=port, prevent_thread_lock=True)
    try:
        big = tmp_path / "big.png"
        big.write_bytes(EXAMPLES[0].files[0].read_bytes() + bytes(2 * 2**20))  # 2 MiB over a 1 MiB limit
        with httpx.Client(base_url=url, timeout=60) as http:  # the server's own check, past any client
            response = http.post("gradio_api/upload", files={"files": (big.name, big.read_bytes(), "image/png")})
        assert response.status_code == 413
        client = Client(url, verbose=False)
        with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
            ask(client, "What is this?", [big])
        example = EXAMPLES[0]
        assert example.answer in assistant_parts(ask(client, example.question, example.files))[1]
    finally:
        demo.close()
