"""The demo as a Space runs it: start ``glm4v-edge demo``, ask one image question through
gradio_client, and record time to first token, tokens/s and the demo process's peak memory.

    python benchmarks/space_check.py OUT.json --artifacts FOLDER --memory-gb 14 --image-px 448 --tokens 32

One warm-up question first (the demo loads a variant on its first request;
``ready_and_variant_loaded_s`` is when its 2-token answer came back), then the measured one in
a new session, so it is a first turn (the warm-up's image is not in its history). The client
does not download the files in the streamed chat: a browser caches them, while gradio_client
would fetch them again on every update, on the same cores as the demo.
Recorded: the demo's own figures under the answer (time to first token, decode tokens/s and
token count, as a user sees them), the reply's wall time at the client, and the demo process's
peak memory (VmHWM; variants load inside it), read before it is stopped. A random-weight model's
token ids mostly decode to no text, so the stream cannot be timed from the client's side.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reply_text(chat: list[dict]) -> str:
    """The assistant's text (thinking, answer, the metrics line) as the chat shows it; Gradio 6
    gives a message's content as parts."""
    parts = [part for m in chat if m["role"] == "assistant"
             for part in (m["content"] if isinstance(m["content"], list) else [m["content"]])]
    return "".join((part.get("text") or "") if isinstance(part, dict) else str(part) for part in parts)


def demo_metrics(text: str) -> dict:
    """The line the demo shows under an answer: 'first token 1.23 s · 4.5 tokens/s · 32 tokens · variant'."""
    found = re.search(r"first token ([\d.]+) s · ([\d.]+|-) tokens/s · (\d+) tokens", text)
    if not found:
        raise SystemExit(f"no metrics line in the reply: {text[-300:]!r}")
    rate = found.group(2)
    return {"time_to_first_token_s": float(found.group(1)), "tokens_per_s": None if rate == "-" else float(rate),
            "tokens": int(found.group(3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--memory-gb", default="14")
    parser.add_argument("--image-px", type=int, default=448)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    from glm4v_edge.bench.latency import image_of
    from glm4v_edge.bench.local_server import free_port, status_mib
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine

    port = free_port()
    command = [str(Path(sys.executable).with_name("glm4v-edge")), "demo", "--artifacts", str(args.artifacts),
               "--memory-gb", args.memory_gb, "--port", str(port)]
    started = time.perf_counter()
    demo = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                session = Client(url, verbose=False, download_files=False)
                break
            except Exception:  # not listening yet
                if demo.poll() is not None:
                    raise SystemExit(f"the demo exited: {demo.stderr.read()[-2000:]}") from None
                time.sleep(1)
        ready_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            image = Path(folder) / "question.png"
            image_of(args.image_px).save(image)
            question = {"text": "Describe the image in detail.", "files": [handle_file(str(image))]}
            session.predict(question, [], "onnx-q4", "", 0, 2, 0.0, 1.0, api_name="/chat")  # warm-up: loads
            loaded_s = time.perf_counter() - started
            # A new session: the warm-up's turn (its image included) stays in the first one's history.
            asked = time.perf_counter()
            chat, _ = Client(url, verbose=False, download_files=False).predict(
                question, [], "onnx-q4", "", 0, args.tokens, 0.0, 1.0, api_name="/chat")
            total = time.perf_counter() - asked
        peak = status_mib(demo.pid, "VmHWM")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
    record = {"what": "glm4v-edge demo answering one image question through gradio_client (thinking budget 0)",
              "command": " ".join(["glm4v-edge", *command[1:]]), "image_px": args.image_px,
              "max_new_tokens": args.tokens, "ready_s": round(ready_s, 1),
              "ready_and_variant_loaded_s": round(loaded_s, 1), "demo_shows": demo_metrics(reply_text(chat)),
              "reply_s_at_client": round(total, 2), "demo_peak_rss_mib": peak,
              "machine": describe_machine(), "date": time.strftime("%Y-%m-%d")}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
