"""The measurements under `glm4v-edge bench` run end to end on the embedded model's build and write
the record they say (their figures on the 9B are in benchmarks/results/; here only that they run,
write the fields the results index reads, and refuse bad input in one line; no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from glm4v_edge.bench.command_memory import GNU_TIME
from glm4v_edge.bench.results_index import index_entries
from glm4v_edge.bench.space_check import demo_metrics, reply_text
from glm4v_edge.errors import Glm4vEdgeError
from tests.conftest import assert_one_line_error, run_cli

SUBCOMMANDS = ("conversation", "decode-depth", "decode-profile", "session-options", "stage-profile", "ttft",
               "vision-memory", "space-check", "record", "index")


def measure(*args: str, out: Path) -> dict:
    """``glm4v-edge bench COMMAND --out OUT ARGS``: its one record, checked for the fields every record has."""
    result = run_cli("bench", args[0], "--out", str(out), *args[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("*.json")
    assert path.with_suffix(".md").read_text().startswith("# ")
    record = json.loads(path.read_text())
    assert record["kind"] == args[0] and record["schema_version"] == 1
    assert {"name", "date", "what", "machine", "settings"} <= set(record)
    assert path.name.startswith(record["name"] + "-") and path.name.endswith(f"-{record['date']}.json")
    return record


def test_bench_help_lists_every_measurement():
    result = run_cli("bench", "--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f" {name} " in result.stdout, name
        usage = run_cli("bench", name, "--help")
        assert usage.returncode == 0 and f"glm4v-edge bench {name}" in usage.stdout, usage.stderr


def test_decode_depth_times_both_caches(artifacts, tmp_path):
    record = measure("decode-depth", "--artifacts", str(artifacts), "--depths", "16,64", "--steps", "4",
                     "--rounds", "1", "--threads", "1", out=tmp_path)
    assert set(record["depths"]) == {"16", "64"} and record["peer"] is None
    for row in record["depths"].values():
        assert row["cache_per_step_ms"] > 0 and row["cache_in_place_ms"] > 0 and row["in_place_speedup"] > 0
    assert record["name"] == f"decode-depth-{artifacts.name}" and record["settings"]["depths"] == [16, 64]
    (entry,) = index_entries(tmp_path)
    assert entry.kind.name == "decode-depth" and "contexts of 16, 64 tokens, 4 steps" in entry.what


def test_ttft_sizes_a_video_with_the_profile(artifacts, tmp_path):
    record = measure("ttft", "--artifacts", str(artifacts), "--sizes", "112", "--video-frames", "4",
                     "--video-size", "224x112", "--threads", "1", out=tmp_path)
    results = record["results"]
    assert results["112px"]["image_tokens"] == 16 and results["112px"]["ttft_s"] > 0
    video = results["video"]
    assert video["frames"] == 4 and video["frame_size"] == "224x112" and video["video_tokens"] > 0
    assert video["ttft_s"] > 0 and record["load_s"] > 0
    (entry,) = index_entries(tmp_path)
    assert entry.kind.name == "ttft" and "onnx-q4, 1 threads; 112px, video" in entry.what


def test_decode_profile_splits_a_step_by_operator(artifacts, tmp_path):
    record = measure("decode-profile", "--artifacts", f"first={artifacts}", "--artifacts", str(artifacts),
                     "--past", "8", "--steps", "2", "--threads", "1", out=tmp_path)
    assert set(record["results"]) == {"first", artifacts.name}  # a label, else the folder's name
    profile = record["results"]["first"]
    assert profile["step_ms"]["median"] > 0 and profile["past"] == 8
    assert "MatMulNBits" in profile["by_op"] and sum(op["share"] for op in profile["by_op"].values()) == \
        pytest.approx(1, abs=0.02)
    # as generate() runs it: the cache bound in place, the decode branch of each layer's If
    assert profile["cache_in_place"] and {"If", "FusedMatMul"} <= set(profile["by_op"])
    assert "GroupQueryAttention" not in profile["by_op"]


def test_a_branch_node_counts_once():
    """An If's kernel event spans its branch's node events: each keeps only its own time."""
    from glm4v_edge.bench.decode_profile import kernel_events

    def node(op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [node("MatMulNBits", 0, 50), node("If", 60, 30), node("Slice", 62, 10), node("MatMul", 75, 12),
              node("Add", 95, 5), {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}]
    own = {event["args"]["op_name"]: event["dur"] for event in kernel_events(events)}
    assert own == {"MatMulNBits": 50, "If": 8, "Slice": 10, "MatMul": 12, "Add": 5}


def test_session_options_times_each_case_beside_the_defaults(artifacts, tmp_path):
    record = measure("session-options", "--artifacts", str(artifacts), "--cases", "no spinning,1 thread",
                     "--past", "8", "--steps", "2", "--prefill", "8", "--rounds", "2", "--threads", "2", out=tmp_path)
    cases = record["cases"]
    assert list(cases) == ["defaults", "no spinning", "1 thread"]  # the defaults first: the ratios need them
    assert cases["defaults"]["decode_vs_defaults"] == cases["defaults"]["prefill_vs_defaults"] == 1
    assert cases["1 thread"]["options"]["threads"] == 1 and cases["no spinning"]["options"]["spinning"] is False
    for case in cases.values():
        assert case["decode_ms"] > 0 and case["prefill_ms"] > 0 and case["load_s"] > 0 and len(case["rounds"]) == 2
    assert "session options" in index_entries(tmp_path)[0].what
    assert_one_line_error(run_cli("bench", "session-options", "--artifacts", str(artifacts), "--cases", "turbo"),
                          "unknown session-options case 'turbo'")


def test_stage_profile_counts_each_stage_against_the_machine(artifacts, tmp_path):
    record = measure("stage-profile", "--artifacts", str(artifacts), "--size", "112", "--decode-steps", "2",
                     "--threads", "1", "--gemm-size", "512", "--read-mib", "64", out=tmp_path)
    assert record["image_tokens"] == 16 and record["ttft_s"] > 0 and record["decode_ms_per_token"] > 0
    peak = record["peak"]
    assert peak["int8_gmacs"] == max(rate for name, rate in peak["gemm_gmacs"].items() if name.startswith("int8"))
    assert peak["read_bandwidth_gbs"] == max(peak["read_gbs"].values()) > 0
    before, after = peak["read_gbs_samples"]  # measured before and after the profile: the faster kept
    assert peak["read_gbs"] == {loop: max(before[loop], after[loop]) for loop in before}
    stages = record["stages"]
    assert set(stages) == {"vision", "prefill", "decode_step"}
    # Counted from the shapes each node ran with, exactly: every decoder linear once per prompt
    # token, lm_head for the last one (int8 arithmetic); causal attention over the prompt (float).
    text = json.loads((artifacts / "config.json").read_text())["text_config"]
    width, heads, kv_heads = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]
    head_dim, layers, mlp = width // heads, text["num_hidden_layers"], text["intermediate_size"]
    per_token = layers * (2 * width * width + 2 * width * kv_heads * head_dim + 3 * width * mlp)
    prompt, lm_head = record["prompt_tokens"], width * text["vocab_size"]
    attention = 2 * heads * head_dim * layers * prompt * (prompt + 1) // 2
    assert stages["prefill"]["macs"]["int8"] == prompt * per_token + lm_head
    # float: the attention, and whatever small float MatMul a graph keeps (exported with the lowest
    # admitted onnx and onnxscript, the rotary's frequencies times positions stays one: 936 here)
    assert attention <= stages["prefill"]["macs"]["float"] < attention + prompt * width
    assert stages["decode_step"]["macs"]["int8"] == per_token + lm_head
    for result in stages.values():
        assert result["run_ms"] >= result["bound_ms"] > 0  # nothing beats its bound
        assert result["bound_ms"] == max(result["compute_bound_ms"], result["read_bound_ms"])
        # each kernel at its own rate is no faster than the peaks: never under the bound
        assert result["kernel_rates_ms"] >= result["bound_ms"]
        # the same multiply-adds by kernel (means over the steps, each truncated)
        assert sum(result["macs_by_kernel"].values()) == pytest.approx(sum(result["macs"].values()), abs=4)
        assert "MatMulNBits" in result["by_op_ms"]
    assert "vision" in index_entries(tmp_path)[0].what


def test_vision_memory_runs_each_case_in_its_own_process(artifacts, tmp_path):
    record = measure("vision-memory", "--artifacts", str(artifacts), "--sizes", "112", "--video-frames", "0",
                     "--threads", "1", out=tmp_path)
    (case,) = record["results"][artifacts.name].values()
    assert case["patches"] == 64 and case["grid_thw"] == [[1, 8, 8]] and case["features"] == 16
    assert case["peak_rss_mib"] >= case["peak_rss_after_load_mib"] > 0


def test_vision_memory_video_case_is_a_sliding_clip(artifacts):
    """The video case's batch, here in this process (each measured case spawns one)."""
    from glm4v_edge.bench.vision_memory import Case, case_batch
    from glm4v_edge.checkpoint import load_processor

    _, grids = case_batch(load_processor(artifacts), Case("video 2x112px", 112, 2))
    assert grids.tolist() == [[1, 8, 8]]  # two frames, one temporal patch


def test_record_measures_each_command_and_its_exit_status(tmp_path):
    allocate = f"{sys.executable} -c \"x = bytearray(200 * 2**20); print('allocated')\""
    record = measure("record", "--name", "probe", "--", allocate, "echo done; exit 3", out=tmp_path)
    first, second = record["runs"]
    assert (first["exit_status"], second["exit_status"]) == (0, 3)
    assert first["peak_tree_rss_mib"] > 0 and "allocated" in first["output_tail"]
    assert second["output_tail"] == "done\n"  # GNU time's figures are not mixed into the output
    if Path(GNU_TIME).is_file():  # each process's own peak, not this (larger) process's
        assert first["largest_process_rss_mib"] >= 200 > second["largest_process_rss_mib"]
    assert record["settings"]["commands"] == [allocate, "echo done; exit 3"]
    (entry,) = index_entries(tmp_path)
    assert entry.kind.name == "record" and "2 commands" in entry.what


def test_space_check_reads_the_line_the_demo_shows():
    chat = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "An answer.\n\nfirst token 1.25 s · 4.5 "
                                               "tokens/s · 32 tokens · onnx-q4"}]}]
    assert demo_metrics(reply_text(chat)) == {"time_to_first_token_s": 1.25, "tokens_per_s": 4.5, "tokens": 32}
    assert demo_metrics("first token 0.50 s · - tokens/s · 1 tokens")["tokens_per_s"] is None
    with pytest.raises(Glm4vEdgeError, match="no metrics line"):
        demo_metrics("no figures here")


@pytest.mark.slow
def test_space_check_asks_the_demo(artifacts, tmp_path):
    record = measure("space-check", "--artifacts", str(artifacts), "--image-px", "112", "--max-new-tokens", "4",
                     "--memory-gb", "4", out=tmp_path)
    assert record["demo_shows"]["tokens"] >= 1 and record["demo_peak_rss_mib"] > 0
    assert record["command"].startswith(f"glm4v-edge demo --artifacts {artifacts} --memory-gb 4 --port ")


def test_bad_input_is_one_line(tmp_path):
    assert_one_line_error(run_cli("bench", "decode-depth", "--artifacts", str(tmp_path), "--depths", "16,x"),
                          "--depths '16,x': give whole numbers")
    assert_one_line_error(run_cli("bench", "ttft", "--video-frames", "2", "--video-size", "640by360"),
                          "--video-size '640by360'")
    assert_one_line_error(run_cli("bench", "vision-memory", "--artifacts", f"a={tmp_path}", "--artifacts",
                                  f"a={tmp_path}"), "two builds labelled 'a'")
    assert_one_line_error(run_cli("bench", "decode-profile", "--artifacts", str(tmp_path), "--dtype", "q9"),
                          "unknown variant(s): onnx-q9")
    assert_one_line_error(run_cli("bench", "space-check", "--artifacts", str(tmp_path), "--variant", "nope"),
                          "unknown variant(s): nope")
