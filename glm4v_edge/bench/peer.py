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
import signal
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
    """One llama-bench run: its JSON records and its own peak resident memory (MiB), its VmHWM
    read while it runs (``os.wait4``'s figure would include this process's: a forked child
    starts with its parent's peak)."""
    from glm4v_edge.bench.local_server import PeakSampler, status_mib

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([str(binary), *arguments, "-o", "json"], stdout=out, stderr=err)
        sampler = PeakSampler(lambda: status_mib(process.pid, "VmHWM"))
        process.wait()
        peak = sampler.stop()
        if process.returncode < 0:  # e.g. SIGILL: a build for instructions this machine refuses
            raise Glm4vEdgeError(f"llama-bench was killed by {signal.Signals(-process.returncode).name}")
        if process.returncode != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip().splitlines() or ["no message"]
            raise Glm4vEdgeError(f"llama-bench failed ({process.returncode}): {first_line(message[-1])}")
        out.seek(0)
        return json.loads(out.read()), round(peak, 1)


def decode_depth(results: dict[str, dict]) -> int:
    """The prompt length the variants decoded after (their time-to-first-token prompt)."""
    depths = [((r.get("latency") or {}).get("time_to_first_token") or {}).get("prompt_tokens")
              for r in results.values() if r.get("status") == "ok"]
    return max([d for d in depths if d] or [0])


def prefill_lengths(results: dict[str, dict]) -> dict[str, int]:
    """Prefill stage name -> its prompt's real token count, as the variants measured it."""
    return {label: stage["prompt_tokens"] for r in results.values() if r.get("status") == "ok"
            for label, stage in ((r.get("latency") or {}).get("prefill") or {}).items()}


def decoder_matrices(gguf: Path) -> dict:
    """Stored bytes and weights of the GGUF's decoder matrices (every 2-D tensor but the token
    embeddings, which a decode step reads one row of), its file type, and so its bits per weight:
    the same count as the ONNX rows' (``runtime.onnx_variant.matrix_bits_per_weight``)."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(gguf)
    matrices = [t for t in reader.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    stored, weights = sum(int(t.n_bytes) for t in matrices), sum(int(t.n_elements) for t in matrices)
    field = reader.fields.get("general.file_type")
    file_type = LlamaFileType(int(field.parts[-1][0])).name.removeprefix("MOSTLY_") if field else None
    return {"bytes": stored, "weights": weights, "file_type": file_type,
            "bits_per_weight": round(8 * stored / weights, 3) if weights else None}


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
    return peer_result(gguf, lengths, prefill, decode[0], max(peaks + [peak]), decoder_matrices(gguf))


def peer_result(gguf: Path, lengths: dict[str, int], prefill_records: list[dict], generation: dict,
                peak_rss_mib: float, matrices: dict | None = None) -> dict:
    """llama-bench's records as a result shaped like a variant's (``latency.prefill``,
    ``latency.decode``), prefill keyed by the variants' stage names so the rows line up."""
    by_length = {record["n_prompt"]: record for record in prefill_records}
    prefill = {label: {"median_ms": round(by_length[tokens]["avg_ns"] / 1e6, 3), "p90_ms": None,
                       "samples": len(by_length[tokens]["samples_ns"]), "prompt_tokens": tokens}
               for label, tokens in lengths.items()}
    decode = {"median_ms": round(1000 / generation["avg_ts"], 3), "p90_ms": None,
              "samples": len(generation["samples_ts"]), "tokens_per_s": round(generation["avg_ts"], 2),
              "depth": generation["n_depth"], "mean_of": "llama-bench repetitions"}
    matrices = matrices or {}
    file_type = matrices.get("file_type") or generation["model_type"].split()[-1]
    return {
        "status": "ok", "name": f"llama.cpp {file_type}", "peer": "llama.cpp",
        "load_s": None, "artifact_bytes": gguf.stat().st_size, "decoder_bytes": matrices.get("bytes"),
        "details": {"gguf": gguf.name, "llama_cpp_commit": generation["build_commit"],
                    "threads": generation["n_threads"], "flash_attn": generation.get("flash_attn"),
                    "decoder_bits_per_weight": matrices.get("bits_per_weight")},
        "latency": {"vision": {}, "prefill": prefill, "time_to_first_token": None, "decode": decode},
        "peak_rss_mib": peak_rss_mib,
    }
