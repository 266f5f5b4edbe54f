"""The demo as a Space runs it (``glm4v-edge bench space-check``): start ``glm4v-edge demo``, ask
one image question through gradio_client, and record time to first token, tokens/s and the demo
process's peak memory.

One warm-up question first (the demo loads a variant on its first request;
``ready_and_variant_loaded_s`` is when its 2-token answer came back), then the measured one in a
new session, so it is a first turn (the warm-up's image is not in its history). The client does
not download the files in the streamed chat: a browser caches them, while gradio_client would
fetch them again on every update, on the same cores as the demo. Recorded: the demo's own
figures under the answer (time to first token, decode tokens/s and token count, as a user sees
them), the reply's wall time at the client, and the demo process's peak memory (VmHWM; variants
load inside it), read before it is stopped. A random-weight model's token ids mostly decode to no
text, so the stream cannot be timed from the client's side.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.progress import SILENT, Progress

KIND = "space-check"
QUESTION = "Describe the image in detail."
WARM_UP_TOKENS = 2
START_TIMEOUT_S = 600
METRICS = re.compile(r"first token ([\d.]+) s · ([\d.]+|-) tokens/s · (\d+) tokens")


@dataclass(frozen=True)
class SpaceCheckSettings:
    artifacts: Path
    model: str | None = None
    variant: str = "onnx-q4"
    memory_gb: float = 14.0  # the demo's --memory-gb: a Space's RAM, less room for the system
    image_px: int = 448
    max_new_tokens: int = 32
    threads: int | None = None
    out: Path | None = None
    name: str | None = None

    def demo_args(self) -> list[str]:
        args = ["--artifacts", str(self.artifacts), "--memory-gb", f"{self.memory_gb:g}"]
        args += ["--model", self.model] if self.model else []
        return args + (["--threads", str(self.threads)] if self.threads else [])


def reply_text(chat: list[dict]) -> str:
    """The assistant's text (thinking, answer, the metrics line) as the chat shows it; Gradio 6
    gives a message's content as parts."""
    parts = [part for m in chat if m["role"] == "assistant"
             for part in (m["content"] if isinstance(m["content"], list) else [m["content"]])]
    return "".join((part.get("text") or "") if isinstance(part, dict) else str(part) for part in parts)


def demo_metrics(text: str) -> dict:
    """The line the demo shows under an answer: 'first token 1.23 s · 4.5 tokens/s · 32 tokens · variant'."""
    found = METRICS.search(text)
    if not found:
        raise Glm4vEdgeError(f"the demo's reply has no metrics line: {text[-300:]!r}")
    rate = found.group(2)
    return {"time_to_first_token_s": float(found.group(1)), "tokens_per_s": None if rate == "-" else float(rate),
            "tokens": int(found.group(3))}


def connect(demo, timeout_s: float = START_TIMEOUT_S):
    """A gradio_client session, once the demo answers."""
    from gradio_client import Client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if demo.process.poll() is not None:
            lines = demo.output().strip().splitlines() or ["no output"]
            raise Glm4vEdgeError(f"the demo exited with status {demo.process.returncode}: {first_line(lines[-1])}")
        try:
            return Client(demo.base + "/", verbose=False, download_files=False)
        except Exception:  # not listening yet; gradio_client raises several types
            time.sleep(1)
    raise Glm4vEdgeError(f"the demo did not answer within {timeout_s:.0f} s")


def ask(session, question: dict, variant: str, max_new_tokens: int) -> list[dict]:
    """One chat turn through the demo's API: no system prompt, thinking budget 0, greedy."""
    chat, _ = session.predict(question, [], variant, "", 0, max_new_tokens, 0.0, 1.0, api_name="/chat")
    return chat


def measure_space_check(settings: SpaceCheckSettings, progress: Progress = SILENT) -> dict:
    from gradio_client import handle_file

    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.bench.local_server import CliServer
    from glm4v_edge.runtime.registry import check_built, check_known

    check_known([settings.variant])
    check_built([settings.variant], settings.artifacts)
    progress.start(KIND, 3)
    progress.step("starting glm4v-edge demo")
    demo = CliServer(*settings.demo_args(), command="demo")
    try:
        session = connect(demo)
        ready_s = time.perf_counter() - demo.started
        with tempfile.TemporaryDirectory() as folder:
            image = Path(folder) / "question.png"
            image_of(settings.image_px).save(image)
            question = {"text": QUESTION, "files": [handle_file(str(image))]}
            progress.step(f"warm-up: loading {settings.variant}")
            ask(session, question, settings.variant, WARM_UP_TOKENS)
            loaded_s = time.perf_counter() - demo.started
            progress.step(f"asking for {settings.max_new_tokens} tokens in a new session")
            asked = time.perf_counter()
            chat = ask(connect(demo), question, settings.variant, settings.max_new_tokens)
            reply_s = time.perf_counter() - asked
        peak = demo.memory_mib("VmHWM")
    finally:
        demo.stop()
    record = new_record(KIND, record_name(settings.name, KIND, settings.artifacts),
                        "glm4v-edge demo answering one image question through gradio_client (thinking budget 0)",
                        plain(settings))
    return {**record, "command": " ".join(["glm4v-edge", *demo.args]), "ready_s": round(ready_s, 1),
            "ready_and_variant_loaded_s": round(loaded_s, 1), "demo_shows": demo_metrics(reply_text(chat)),
            "reply_s_at_client": round(reply_s, 2), "demo_peak_rss_mib": peak}


def markdown(record: dict) -> str:
    shows = record["demo_shows"]
    lines = heading(record) + table(
        ["ready s", "ready + variant loaded s", "first token s (demo)", "tokens/s (demo)", "tokens",
         "reply s at client", "demo peak RSS MiB"],
        [[record["ready_s"], record["ready_and_variant_loaded_s"], shows["time_to_first_token_s"],
          shows["tokens_per_s"], shows["tokens"], record["reply_s_at_client"], record["demo_peak_rss_mib"]]])
    settings = record["settings"]
    lines += ["", f"`{record['command']}`: a {settings['image_px']} px image, up to {settings['max_new_tokens']} new "
              f"tokens, {settings['variant']}."]
    return "\n".join(lines) + "\n"
