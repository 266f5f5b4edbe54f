"""benchmarks/results/README.md: generated from the result JSON files, and kept up to date."""

from __future__ import annotations

import json
from pathlib import Path

from glm4v_edge.bench.results_index import index_entries, render_index
from tests.conftest import assert_one_line_error, run_cli

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def write_bench_record(folder: Path, name: str, date: str) -> Path:
    """A small record shaped like `glm4v-edge bench`'s, named as it names its files."""
    record = {"schema_version": 1, "name": name, "date": date, "baseline": "torch-fp32",
              "settings": {"prompts": "quick", "device": "cpu"}, "machine": {"cpu": "Test CPU", "gpu": None},
              "summary": {"torch-fp32": {}, "onnx-q4": {}}, "results": {"torch-fp32": {}, "onnx-q4": {}}}
    path = folder / f"{name}-test-cpu-{date}.json"
    path.write_text(json.dumps(record))
    return path


def test_committed_index_is_up_to_date():
    committed = (RESULTS / "README.md").read_text()
    assert committed == render_index(RESULTS), \
        "benchmarks/results/README.md is out of date: run `glm4v-edge bench index` and commit it"


def test_later_result_of_the_same_name_supersedes_the_earlier(tmp_path):
    older = write_bench_record(tmp_path, "probe", "2026-01-01")
    newer = write_bench_record(tmp_path, "probe", "2026-02-01")
    write_bench_record(tmp_path, "other-probe", "2026-01-01")
    older.with_suffix(".md").write_text("# probe\n")

    entries = {entry.file: entry for entry in index_entries(tmp_path)}
    assert entries[older.name].superseded_by == newer.name
    assert entries[newer.name].superseded_by is None
    assert entries["other-probe-test-cpu-2026-01-01.json"].superseded_by is None  # another name stem
    assert entries[older.name].name_stem == "probe" and entries[older.name].machine == "Test CPU"
    assert entries[older.name].companions == [older.with_suffix(".md").name]

    page = render_index(tmp_path)
    older_row = next(line for line in page.splitlines() if line.startswith(f"| [{older.name}]"))
    assert older_row.endswith(f"| [{newer.name}]({newer.name}) |")
    assert "onnx-q4" in older_row
    assert page == render_index(tmp_path)  # deterministic


def test_unknown_record_lists_its_keys(tmp_path):
    (tmp_path / "mystery-2026-01-01.json").write_text(json.dumps({"alpha": 1, "beta": [2]}))
    (entry,) = index_entries(tmp_path)
    assert (entry.kind.name, entry.what, entry.date) == ("other", "keys: alpha, beta", "2026-01-01")


def test_check_fails_in_one_line_on_a_stale_index(tmp_path):
    write_bench_record(tmp_path, "probe", "2026-01-01")
    assert run_cli("bench", "index", "--results", str(tmp_path)).returncode == 0
    assert run_cli("bench", "index", "--results", str(tmp_path), "--check").returncode == 0

    write_bench_record(tmp_path, "probe", "2026-02-01")
    result = run_cli("bench", "index", "--results", str(tmp_path), "--check")
    assert_one_line_error(result, "README.md is out of date", "glm4v-edge bench index")


def test_a_committed_note_supersedes_a_result_of_another_name(tmp_path):
    """A changed method gives a new name; ``superseded.json`` says what it replaced, and why."""
    older = write_bench_record(tmp_path, "first-method", "2026-01-01")
    newer = write_bench_record(tmp_path, "second-method", "2026-01-01")
    notes = tmp_path / "superseded.json"
    notes.write_text(json.dumps({older.name: {"by": newer.name, "why": "a better method"}}))
    entries = {entry.file: entry for entry in index_entries(tmp_path)}
    assert set(entries) == {older.name, newer.name}  # the note is not a result
    assert (entries[older.name].superseded_by, entries[older.name].why) == (newer.name, "a better method")
    assert f"[{newer.name}]({newer.name}) (a better method) |" in render_index(tmp_path)
    notes.write_text(json.dumps({older.name: {"by": "gone.json"}}))
    result = run_cli("bench", "index", "--results", str(tmp_path))
    assert_one_line_error(result, "superseded by 'gone.json', which is not a result here")
