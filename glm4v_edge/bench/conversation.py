"""A conversation as a user has it, through ``glm4v-edge serve``: turn one asks about an image,
the next turns follow up with the history the demo sends (the answers, never the thinking).
Each turn's time to first token at the client and the server's resident memory, once with the
prompt cache and once with ``--prompt-cache-gb 0``, one server after the other in one run.

The first token is read from the stream: the request asks for per-token usage
(``continuous_usage_stats``), so it is seen even when it decodes to no text yet (a random-weight
model writes many such tokens). Memory: the server's VmRSS sampled every 50 ms during each turn,
and its VmHWM (the peak since it started, loading included) after the last turn; the server is
one process, so that is the whole tree. One short text request warms each server up first (the
first run of a session pays one-time allocation), so turn one measures the prompt, not the start.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
from dataclasses import asdict
from datetime import date
from pathlib import Path

from glm4v_edge.bench.latency import FILLER, image_of
from glm4v_edge.bench.local_server import CliServer, PeakSampler
from glm4v_edge.bench.report import machine_slug, slug
from glm4v_edge.bench.settings import ConversationSettings
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.files import atomic_write_text
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.thinking import history_text, parse_reply

QUESTIONS = ("Describe the image in detail.", "What else do you see in the image?", "Which colours stand out?")
LOAD_TIMEOUT_S = 1800  # the 9B loads in about a minute on 2 cores; a cold disk takes longer


def ask(base_url: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed, greedy chat completion: time to first token, the reply and its usage."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True, "return_token_ids": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    request = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started, first, text, usage, token_ids = time.perf_counter(), None, "", {}, []
    with urllib.request.urlopen(request, timeout=3600) as response:
        for line in response:
            data = line.decode().strip().removeprefix("data: ")
            if not data or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise Glm4vEdgeError(f"the server failed the request: {chunk['error']['message']}")
            usage = chunk.get("usage") or usage
            if first is None and usage.get("completion_tokens"):
                first = time.perf_counter() - started
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
                token_ids += choice.get("token_ids") or []
    return {"time_to_first_token_s": round(first, 3) if first is not None else None,
            "reply_s": round(time.perf_counter() - started, 3), "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "reply": text, "token_ids": token_ids}


def answer_for_history(reply: str, words: int) -> str:
    """What goes back as the assistant's turn: the reply's answer (as the demo sends it), or ``words`` words."""
    if words:
        return " ".join(FILLER[i % len(FILLER)] for i in range(words)) + "."
    return history_text(parse_reply(reply))


def image_message(question: str, image_px: int) -> dict:
    buffer = io.BytesIO()
    image_of(image_px).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": question}]}


def converse(settings: ConversationSettings, prompt_cache_gb: float, progress: Progress) -> dict:
    """One server, one conversation: every turn's figures, then the server's peak memory."""
    progress.step(f"prompt cache {prompt_cache_gb:g} GiB: loading {settings.variant} in glm4v-edge serve")
    server = CliServer(*settings.server_args(prompt_cache_gb))
    try:
        base_url = server.url(timeout_s=LOAD_TIMEOUT_S)
        load_s = round(time.perf_counter() - server.started, 1)
        sampler = PeakSampler(server.memory_mib)  # the server's VmRSS
        ask(base_url, [{"role": "user", "content": "Hello."}], 2)  # warm-up
        history, turns = [], []
        for number, question in enumerate(QUESTIONS):
            progress.step(f"prompt cache {prompt_cache_gb:g} GiB: turn {number + 1}")
            history.append(image_message(question, settings.image_px) if number == 0
                           else {"role": "user", "content": question})
            sampler.reset()
            turn = ask(base_url, history, settings.max_tokens)
            turns.append({"turn": number + 1, "question": question, **turn, "peak_rss_mib": sampler.peak()})
            history.append({"role": "assistant", "content": answer_for_history(turn["reply"], settings.answer_words)})
        sampler.stop()
        with urllib.request.urlopen(server.base + "/health", timeout=30) as response:
            health = json.loads(response.read())
        return {"prompt_cache_gb": prompt_cache_gb, "server": "glm4v-edge " + " ".join(server.args[:-2]),
                "ready_s": load_s, "turns": turns, "server_peak_rss_mib": server.memory_mib("VmHWM"),
                "prompt_cache": health.get("prompt_cache")}
    finally:
        server.stop()


def summarize(cached: dict, uncached: dict) -> dict:
    first = cached["turns"][0]["time_to_first_token_s"]
    return {
        "turn_ttft_vs_turn_1": [round(turn["time_to_first_token_s"] / first, 4) for turn in cached["turns"]],
        "turn_ttft_vs_no_cache": [round(a["time_to_first_token_s"] / b["time_to_first_token_s"], 4)
                                  for a, b in zip(cached["turns"], uncached["turns"])],
        "same_replies": [a["token_ids"] == b["token_ids"] and a["reply"] == b["reply"]
                         for a, b in zip(cached["turns"], uncached["turns"])],
        "peak_rss_mib": max(run["server_peak_rss_mib"] or 0 for run in (cached, uncached)),
    }


def markdown(record: dict) -> str:
    cached, uncached = record["runs"]
    machine = record["machine"]
    lines = [f"# {record['name']} · {record['date']}", "",
             f"Machine: {machine.get('cpu')} · {machine.get('cpu_cores')} cores · server threads "
             f"{record['settings']['threads'] or 'default'}. `{cached['server']}` vs `{uncached['server']}`, "
             f"one after the other; a {record['settings']['image_px']} px image, "
             f"{record['settings']['max_tokens']} tokens per reply, greedy; {history_kind(record['settings'])}.", "",
             "| turn | TTFT s, cache | prompt tokens (reused) | TTFT s, no cache | cache / no cache | same reply "
             "| peak RSS MiB, cache / no cache |", "|---|---|---|---|---|---|---|"]
    summary = record["summary"]
    for a, b, same, ratio in zip(cached["turns"], uncached["turns"], summary["same_replies"],
                                 summary["turn_ttft_vs_no_cache"]):
        lines.append(f"| {a['turn']} | {a['time_to_first_token_s']:.2f} | {a['prompt_tokens']} ({a['cached_tokens']}) "
                     f"| {b['time_to_first_token_s']:.2f} | {ratio:.3f} | {'yes' if same else 'no'} "
                     f"| {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} |")
    lines += ["", f"Server peak RSS (VmHWM, loading included): {cached['server_peak_rss_mib']:.0f} MiB with the cache, "
              f"{uncached['server_peak_rss_mib']:.0f} MiB without."]
    return "\n".join(lines) + "\n"


def history_kind(settings: dict) -> str:
    if settings["answer_words"]:
        return f"each answer in the history replaced by a fixed {settings['answer_words']}-word text"
    return "history as the demo sends it (the model's answers, no thinking)"


def measure_conversation(settings: ConversationSettings, progress: Progress = SILENT) -> tuple[dict, list[Path]]:
    from glm4v_edge.machine import describe_machine

    if settings.prompt_cache_gb <= 0:
        raise Glm4vEdgeError("the conversation compares the prompt cache against none: --prompt-cache-gb must be > 0")
    progress.start("conversation", 2 * (1 + len(QUESTIONS)))
    runs = [converse(settings, gb, progress) for gb in (settings.prompt_cache_gb, 0)]
    record = {"schema_version": 1, "kind": "conversation", "name": settings.name, "date": date.today().isoformat(),
              "what": "a three-turn conversation through glm4v-edge serve, with the prompt cache and without",
              "settings": {**asdict(settings), "artifacts": str(settings.artifacts), "out": str(settings.out)},
              "machine": describe_machine(), "runs": runs, "summary": summarize(*runs)}
    settings.out.mkdir(parents=True, exist_ok=True)
    stem = settings.out / f"{slug(settings.name)}-{machine_slug(record['machine'])}-{record['date']}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown(record))
    return record, [stem.with_suffix(".json"), stem.with_suffix(".md")]
