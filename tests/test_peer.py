"""The llama.cpp peer row: llama-bench's own JSON (recorded from a real run on this project's
random tiny GGUF, tests/data/llama-bench-*.json) turned into a row beside the variants', the
one-line refusals, and a real llama-bench run when one is installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glm4v_edge.bench import peer
from glm4v_edge.bench.report import markdown, summarize
from glm4v_edge.errors import Glm4vEdgeError
from tests.conftest import assert_one_line_error, run_cli

DATA = Path(__file__).parent / "data"


def variant_result(decode_ms: float) -> dict:
    """The fields of a variant's result the summary reads (as runner.measure writes them)."""
    return {"status": "ok", "name": "onnx-q4", "load_s": 0.1, "artifact_bytes": 2_000_000, "decoder_bytes": 1_000_000,
            "peak_rss_mib": 800.0,
            "latency": {"vision": {}, "prefill": {"128": {"median_ms": 9.0, "prompt_tokens": 120},
                                                  "512": {"median_ms": 30.0, "prompt_tokens": 500}},
                        "time_to_first_token": {"median_ms": 50.0, "prompt_tokens": 90},
                        "decode": {"median_ms": decode_ms, "p90_ms": decode_ms, "tokens_per_s": 1000 / decode_ms}}}


def recorded(name: str) -> list[dict]:
    return json.loads((DATA / f"llama-bench-{name}.json").read_text())


def test_llama_bench_records_become_a_row_keyed_like_the_variants(tmp_path):
    gguf = tmp_path / "decoder.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    results = {"onnx-q4": variant_result(decode_ms=0.5)}
    assert peer.prefill_lengths(results) == {"128": 120, "512": 500} and peer.decode_depth(results) == 90
    row = peer.peer_result(gguf, peer.prefill_lengths(results), recorded("prefill"), recorded("decode")[0], 1700.0)
    assert row["name"] == "llama.cpp Q4_0" and row["peer"] == "llama.cpp"
    assert row["latency"]["decode"]["depth"] == 90
    assert row["latency"]["decode"]["median_ms"] == pytest.approx(1000 / recorded("decode")[0]["avg_ts"], rel=1e-3)
    prefill_ms = recorded("prefill")[1]["avg_ns"] / 1e6
    assert row["latency"]["prefill"]["512"]["median_ms"] == pytest.approx(prefill_ms, abs=1e-3)

    results[row["name"]] = row
    summary = summarize(results, "onnx-q4", bandwidth_gbs=20.0)
    ratio = summary["llama.cpp Q4_0"]["decode_ms"] / 0.5
    assert summary["onnx-q4"]["decode_vs_llama.cpp Q4_0"] == pytest.approx(ratio, abs=0.01)
    assert summary["llama.cpp Q4_0"]["floor_ms_per_token"] is None  # its matrices not read (a header-only file)
    assert summary["llama.cpp Q4_0"]["prefill:512_ms"] is not None
    record = {"name": "t", "date": "2026-11-30", "baseline": "onnx-q4", "settings": {"runs": 2},
              "machine": {"cpu": "x", "copy_bandwidth_gbs": 20.0}, "summary": summary}
    text = markdown(record)
    assert "| llama.cpp Q4_0 |" in text
    assert f"onnx-q4 **{summary['onnx-q4']['decode_vs_llama.cpp Q4_0']:.2f}x**" in text


def test_a_gguf_states_the_bits_per_weight_of_its_decoder_matrices(tmp_path):
    """Every 2-D tensor but the token embeddings, as the ONNX rows count theirs; the peer's floor
    and its name come from them."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    path = tmp_path / "decoder.gguf"
    writer = GGUFWriter(str(path), "glm4")
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((64, 32), dtype=np.float16))
    q8 = np.zeros((32, 34 * 2), dtype=np.uint8)  # 32 rows of 64 Q8_0 weights: 2 blocks of 34 bytes
    writer.add_tensor("blk.0.ffn_up.weight", q8, raw_shape=(32, 68), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    matrices = peer.decoder_matrices(path)
    assert matrices["weights"] == 64 * 32 + 32 * 64 and matrices["file_type"] == "Q8_0"
    assert matrices["bytes"] == 64 * 32 * 2 + 32 * 68
    assert matrices["bits_per_weight"] == pytest.approx(8 * (64 * 32 * 2 + 32 * 68) / (2 * 64 * 32), abs=1e-3)
    row = peer.peer_result(path, {}, [], recorded("decode")[0], 100.0, matrices)
    assert row["name"] == "llama.cpp Q8_0" and row["decoder_bytes"] == matrices["bytes"]
    assert row["details"]["decoder_bits_per_weight"] == matrices["bits_per_weight"]


def test_peer_refusals_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(Glm4vEdgeError, match="no such GGUF"):
        peer.check_peer(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\3\4 not a gguf")
    with pytest.raises(Glm4vEdgeError, match="not a GGUF file"):
        peer.check_peer(not_gguf)
    monkeypatch.setenv(peer.LLAMA_BENCH_ENV, str(tmp_path / "nowhere" / "llama-bench"))
    with pytest.raises(Glm4vEdgeError, match="needs llama-bench"):
        peer.find_llama_bench()


def test_decode_depth_refuses_a_missing_gguf_in_one_line(artifacts, tmp_path):
    result = run_cli("bench", "decode-depth", "--artifacts", str(artifacts), "--peer", str(tmp_path / "none.gguf"),
                     "--out", str(tmp_path))
    assert_one_line_error(result, "no such GGUF file")
    assert not list(tmp_path.glob("*.json"))


def test_a_failing_llama_bench_is_reported_in_one_line(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)  # a header, no model: llama-bench fails to load it
    try:
        binary = peer.find_llama_bench()
    except Glm4vEdgeError:
        pytest.skip("llama-bench is not installed (benchmarks/llama_cpp/build.sh)")
    with pytest.raises(Glm4vEdgeError, match=r"llama-bench failed \(\d+\)"):
        peer.run_llama_bench(binary, ["-m", str(gguf), "-p", "8", "-n", "0", "-r", "1"])


def test_a_llama_bench_killed_by_a_signal_says_which(tmp_path):
    """llama.cpp built for AMX died with SIGILL on a machine whose AMX it could not use: named."""
    binary = tmp_path / "llama-bench"
    binary.write_text("#!/bin/sh\nkill -ILL $$\n")
    binary.chmod(0o755)
    with pytest.raises(Glm4vEdgeError, match="^llama-bench was killed by SIGILL$"):
        peer.run_llama_bench(binary, [])


def test_measure_peer_runs_llama_bench(tmp_path):
    """A real run when llama-bench and a GGUF are at hand (LLAMA_BENCH, GLM4V_EDGE_PEER_GGUF)."""
    import os

    gguf = os.environ.get("GLM4V_EDGE_PEER_GGUF")
    if not gguf or not (shutil.which("llama-bench") or os.environ.get(peer.LLAMA_BENCH_ENV)):
        pytest.skip("set LLAMA_BENCH and GLM4V_EDGE_PEER_GGUF to run llama-bench for real")
    result = peer.measure_peer(Path(gguf), 2, {"onnx-q4": variant_result(decode_ms=1.0)}, decode_tokens=8, runs=1)
    assert result["latency"]["decode"]["median_ms"] > 0 and result["peak_rss_mib"] > 0
    assert set(result["latency"]["prefill"]) == {"128", "512"}
