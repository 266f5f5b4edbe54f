"""llama.cpp as a peer row in the same benchmark run: ``llama-bench`` on a GGUF of the same
decoder, with the variants' thread count, prompt lengths and decode length.

``llama-bench`` times prefill as ``pp<N>`` (N prompt tokens from an empty context) and decode as
``tg<N> @ d<D>`` (N tokens after a context of D); both are reported as tokens/s, averaged over
its repetitions. They are turned into the benchmark's own fields (median_ms of a prefill of that
many tokens; ms/token) so the report compares them with the variants' rows unchanged. It runs on
text: the vision encoder and time to first token have no llama.cpp counterpart here.
The recipe that builds llama.cpp and converts a checkpoint is ``benchmarks/llama_cpp/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError, first_line

LLAMA_BENCH_ENV = "LLAMA_BENCH"  # path to llama-bench when it is not on PATH


def find_llama_bench() -> Path:
    found = os.environ.get(LLAMA_BENCH_ENV) or shutil.which("llama-bench")
    if not found or not Path(found).is_file():
        raise Glm4vEdgeError(f"the llama.cpp peer needs llama-bench: put it on PATH or set {LLAMA_BENCH_ENV} "
                             "(build it with benchmarks/llama_cpp/build.sh)")
    return Path(found)


def check_peer(gguf: Path) -> Path:
    """The GGUF and llama-bench exist; checked before any variant runs."""
    if not gguf.is_file():
        raise Glm4vEdgeError(f"--peer {gguf}: no such GGUF file")
    with gguf.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise Glm4vEdgeError(f"--peer {gguf}: not a GGUF file")
    return find_llama_bench()


def run_llama_bench(binary: Path, arguments: list[str]) -> tuple[list[dict], float]:
    """One llama-bench run: its JSON records and the peak resident memory (MiB) of its process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([str(binary), *arguments, "-o", "json"], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # wait4: this child's own peak RSS
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip().splitlines() or ["no message"]
            raise Glm4vEdgeError(f"llama-bench failed ({code}): {first_line(message[-1])}")
        out.seek(0)
        return json.loads(out.read()), round(usage.ru_maxrss / 1024, 1)


def decode_depth(results: dict[str, dict]) -> int:
    """The prompt length the variants decoded after (their time-to-first-token prompt)."""
    depths = [((r.get("latency") or {}).get("time_to_first_token") or {}).get("prompt_tokens")
              for r in results.values() if r.get("status") == "ok"]
    return max([d for d in depths if d] or [0])


def prefill_lengths(results: dict[str, dict]) -> dict[str, int]:
    """Prefill stage name -> its prompt's real token count, as the variants measured it."""
    return {label: stage["prompt_tokens"] for r in results.values() if r.get("status") == "ok"
            for label, stage in ((r.get("latency") or {}).get("prefill") or {}).items()}


def measure_peer(gguf: Path, threads: int, results: dict[str, dict], decode_tokens: int, runs: int) -> dict:
    """Run llama-bench twice (prefill lengths from an empty context; decode after the variants'
    prompt length) and return the peer's result."""
    binary = check_peer(gguf)
    common = ["-m", str(gguf), "-t", str(threads), "-r", str(runs)]
    lengths, depth = prefill_lengths(results), decode_depth(results)
    prefill, peaks = [], []
    if lengths:
        prefill, peak = run_llama_bench(binary, [*common, "-p", ",".join(map(str, lengths.values())), "-n", "0"])
        peaks.append(peak)
    decode, peak = run_llama_bench(binary, [*common, "-p", "0", "-n", str(decode_tokens), "-d", str(depth)])
    return peer_result(gguf, lengths, prefill, decode[0], max(peaks + [peak]))


def peer_result(gguf: Path, lengths: dict[str, int], prefill_records: list[dict], generation: dict,
                peak_rss_mib: float) -> dict:
    """llama-bench's records as a result shaped like a variant's (``latency.prefill``,
    ``latency.decode``), prefill keyed by the variants' stage names so the rows line up."""
    by_length = {record["n_prompt"]: record for record in prefill_records}
    prefill = {label: {"median_ms": round(by_length[tokens]["avg_ns"] / 1e6, 3), "p90_ms": None,
                       "samples": len(by_length[tokens]["samples_ns"]), "prompt_tokens": tokens}
               for label, tokens in lengths.items()}
    decode = {"median_ms": round(1000 / generation["avg_ts"], 3), "p90_ms": None,
              "samples": len(generation["samples_ts"]), "tokens_per_s": round(generation["avg_ts"], 2),
              "depth": generation["n_depth"], "mean_of": "llama-bench repetitions"}
    return {
        "status": "ok", "name": f"llama.cpp {generation['model_type'].split()[-1]}", "peer": "llama.cpp",
        "load_s": None, "artifact_bytes": gguf.stat().st_size, "decoder_bytes": None,
        "details": {"gguf": gguf.name, "llama_cpp_commit": generation["build_commit"],
                    "threads": generation["n_threads"], "flash_attn": generation.get("flash_attn")},
        "latency": {"vision": {}, "prefill": prefill, "time_to_first_token": None, "decode": decode},
        "peak_rss_mib": peak_rss_mib,
    }
