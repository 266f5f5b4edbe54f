"""The measurement scripts under benchmarks/ run end to end on the embedded model's build (their
figures on the 9B are in benchmarks/results/; here only that they run and write what they say)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def test_decode_depth_times_both_caches(artifacts, tmp_path):
    out = tmp_path / "depth.json"
    run_script("decode_depth.py", str(out), "--artifacts", str(artifacts), "--depths", "16,64", "--steps", "4",
               "--rounds", "1", "--threads", "1")
    record = json.loads(out.read_text())
    assert set(record["depths"]) == {"16", "64"} and record["peer"] is None
    for row in record["depths"].values():
        assert row["cache_per_step_ms"] > 0 and row["cache_in_place_ms"] > 0 and row["in_place_speedup"] > 0


def test_cpu_profile_ttft_sizes_a_video_with_the_profile(artifacts, tmp_path):
    out = tmp_path / "ttft.json"
    run_script("cpu_profile_ttft.py", str(out), "--artifacts", str(artifacts), "--sizes", "112",
               "--video-frames", "4", "--video-size", "224x112", "--threads", "1")
    results = json.loads(out.read_text())["results"]
    assert results["112px"]["image_tokens"] == 16
    video = results["video"]
    assert video["frames"] == 4 and video["video_tokens"] > 0 and video["ttft_s"] > 0
