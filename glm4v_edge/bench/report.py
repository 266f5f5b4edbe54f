"""A benchmark run -> ``<name>-<machine>-<date>.json`` (versioned schema), a Markdown table and
matplotlib plots (latency per stage, decode tok/s vs memory, accuracy vs size)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

from glm4v_edge.bench.bandwidth import floor_ms_per_token
from glm4v_edge.files import atomic_write_text

SCHEMA_VERSION = 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "machine"


def machine_slug(machine: dict) -> str:
    return slug(machine.get("gpu") or machine.get("cpu") or "machine")


def _ratio(base: float | None, value: float | None) -> float | None:
    return round(base / value, 2) if base and value else None


def summarize(results: dict[str, dict], baseline: str, bandwidth_gbs: float,
              read_bandwidth_gbs: float | None = None) -> dict[str, dict]:
    """One flat row per variant: the numbers a reader compares, with speed-ups vs the baseline, and
    decode against the floors: weight bytes at the copy bandwidth and at the read-only bandwidth."""
    def stage(result: dict, key: str) -> float | None:
        latency = result.get("latency") or {}
        if key == "decode":
            return (latency.get("decode") or {}).get("median_ms")
        if key == "ttft":
            return (latency.get("time_to_first_token") or {}).get("median_ms")
        if key == "follow_up":
            return (latency.get("follow_up") or {}).get("median_ms")
        group, label = key.split(":")
        return (latency.get(group, {}).get(label) or {}).get("median_ms")

    base = results[baseline]
    keys = sorted({f"{group}:{label}" for r in results.values() for group in ("vision", "prefill")
                   for label in (r.get("latency") or {}).get(group, {})},
                  key=lambda k: (k.split(":")[0], int(re.sub(r"\D", "", k.split(":")[1]) or 0)))
    rows = {}
    for name, result in results.items():
        if result.get("status") != "ok":
            rows[name] = {"status": result.get("status", "failed"), "error": result.get("error")}
            continue
        row = {"status": "ok", "size_mb": round(result["artifact_bytes"] / 1e6, 2), "load_s": result["load_s"],
               "bits_per_weight": (result.get("details") or {}).get("decoder_bits_per_weight")}
        for key in (*keys, "ttft", "follow_up", "decode"):
            row[f"{key}_ms"] = stage(result, key)
            row[f"{key}_speedup"] = _ratio(stage(base, key), stage(result, key))
        decode = (result.get("latency") or {}).get("decode") or {}
        follow_up = (result.get("latency") or {}).get("follow_up") or {}
        row["follow_up_cached_tokens"] = (sorted(follow_up["cached_tokens"])[len(follow_up["cached_tokens"]) // 2]
                                          if follow_up.get("cached_tokens") else None)
        row["decode_p90_ms"] = decode.get("p90_ms")
        row["tokens_per_s"] = decode.get("tokens_per_s")
        row["peer"] = result.get("peer")  # e.g. "llama.cpp": measured by its own tool, not a variant
        row["floor_ms_per_token"] = (floor_ms_per_token(result["decoder_bytes"], bandwidth_gbs)
                                     if result.get("decoder_bytes") else None)
        row["decode_vs_floor"] = (round(row["decode_ms"] / row["floor_ms_per_token"], 2)
                                  if row["decode_ms"] and row["floor_ms_per_token"] else None)
        # a variant measured its read loops in turns with its decode: that floor bounds the same
        # machine the decode ran on; peers (and older records) have the run's before/after samples
        in_turns = decode.get("reads_in_turns") or {}
        row["read_floor_gbs"] = in_turns.get("read_bandwidth_gbs") or read_bandwidth_gbs
        row["read_floor_measured"] = ("in turns with its decode" if in_turns
                                      else "before and after the variants" if read_bandwidth_gbs else None)
        row["read_floor_ms_per_token"] = (floor_ms_per_token(result["decoder_bytes"], row["read_floor_gbs"])
                                          if result.get("decoder_bytes") and row["read_floor_gbs"] else None)
        row["decode_vs_read_floor"] = (round(row["decode_ms"] / row["read_floor_ms_per_token"], 2)
                                       if row["decode_ms"] and row["read_floor_ms_per_token"] else None)
        row["decode_vs_run_read_floor"] = (  # against the run's fastest sample, for comparison
            round(row["decode_ms"] / floor_ms_per_token(result["decoder_bytes"], read_bandwidth_gbs), 2)
            if row["decode_ms"] and result.get("decoder_bytes") and read_bandwidth_gbs else None)
        row["peak_rss_mib"] = result.get("peak_rss_mib")
        row["cuda_peak_mib"] = result.get("cuda_peak_mib")
        fidelity = result.get("fidelity")
        row["mean_kl"] = None if fidelity is None else fidelity["mean_kl"]
        row["top1_agreement"] = None if fidelity is None else fidelity["top1_agreement"]
        row["greedy_match"] = None if fidelity is None else f"{fidelity['greedy_match']}/{fidelity['reference_tokens']}"
        row["identical_replies"] = (None if fidelity is None
                                    else f"{fidelity['identical_replies']}/{fidelity['prompts']}")
        row["task_accuracy"] = (result.get("task") or {}).get("accuracy")
        row["task_replies_identical"] = (result.get("task") or {}).get("replies_identical_to_baseline")
        row["public_accuracy"] = (result.get("public_set") or {}).get("accuracy")
        rows[name] = row
    peers = {name: row for name, row in rows.items() if row.get("peer")}
    for row in rows.values():  # > 1: faster than that peer, measured in this run
        for name, peer in peers.items():
            row[f"decode_vs_{name}"] = _ratio(peer["decode_ms"], row.get("decode_ms"))
    return rows


def build_record(name: str, settings: dict, machine: dict, bandwidth_gbs: float, results: dict,
                 baseline: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "date": date.today().isoformat(),
        "baseline": baseline,
        "settings": settings,
        "machine": {**machine, "copy_bandwidth_gbs": bandwidth_gbs},
        "summary": summarize(results, baseline, bandwidth_gbs, machine.get("read_bandwidth_gbs")),
        "results": results,
    }


def _fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:{spec}}{suffix}"


def task_cell(row: dict) -> str:
    same = row["task_replies_identical"]
    return _fmt(row["task_accuracy"], ".1%") + ("" if same is None else f" ({same})")


def measured_latency(record: dict) -> bool:
    return any(row.get("decode_ms") is not None for row in record["summary"].values())


def markdown(record: dict) -> str:
    summary, baseline = record["summary"], record["baseline"]
    stages = [key[:-3] for key in next((r for r in summary.values() if r["status"] == "ok"), {}) if
              key.endswith("_ms") and ":" in key]
    machine = record["machine"]
    lines = [
        f"# {record['name']} · {record['date']}",
        "",
        f"Machine: {machine.get('gpu') or machine.get('cpu')} · {machine.get('cpu_cores')} cores · "
        f"torch threads {machine.get('torch_threads')} · copy bandwidth {machine['copy_bandwidth_gbs']} GB/s "
        f"on {machine.get('copy_bandwidth_threads', 1)} threads"
        + (f", read-only {machine['read_bandwidth_gbs']} GB/s ({machine.get('read_loop')})"
           if machine.get("read_bandwidth_gbs") else "") + ". "
        f"Baseline: **{baseline}**; speed-ups (x) are baseline time / variant time, measured in this run, "
        "each variant in its own process. "
        + (f"Medians over {record['settings'].get('runs')} runs." if measured_latency(record) else
           "Accuracy only: no latency measured (prompt set none)."),
        "",
        "| variant | size MB | bits/weight | load s | " + "".join(f"{s.replace(':', ' ')} ms | " for s in stages)
        + "TTFT ms | follow-up TTFT ms (prompt tokens reused) | decode ms/token (p90) | tok/s | floor ms/token "
        "| read floor ms/token (x) "
        "| peak RSS MiB | mean KL | top-1 | greedy match | identical replies | task acc (same replies) | public acc |",
        "|---" * (17 + len(stages)) + "|",
    ]
    for name, row in summary.items():
        if row["status"] != "ok":
            lines.append(f"| {name} | {row['status']}: {row['error']} |" + " |" * (15 + len(stages)))
            continue
        cells = [name, _fmt(row["size_mb"]), _fmt(row.get("bits_per_weight"), ".2f"), _fmt(row["load_s"], ".2f")]
        for s in (*stages, "ttft"):
            cells.append(f"{_fmt(row[f'{s}_ms'])} ({_fmt(row[f'{s}_speedup'], '.2f', 'x')})")
        cells.append(f"{_fmt(row.get('follow_up_ms'))} ({_fmt(row.get('follow_up_cached_tokens'), 'd')})")
        cells.append(f"{_fmt(row['decode_ms'], '.2f')} ({_fmt(row['decode_p90_ms'], '.2f')}) "
                     f"{_fmt(row['decode_speedup'], '.2f', 'x')}")
        cells += [_fmt(row["tokens_per_s"]), _fmt(row["floor_ms_per_token"], ".3f"),
                  f"{_fmt(row.get('read_floor_ms_per_token'), '.3f')} "
                  f"({_fmt(row.get('decode_vs_read_floor'), '.2f', 'x')})",
                  _fmt(row["peak_rss_mib"], ".0f"),
                  _fmt(row["mean_kl"], ".2e"), _fmt(row["top1_agreement"], ".1%"), row["greedy_match"] or "–",
                  row["identical_replies"] or "–", task_cell(row), _fmt(row["public_accuracy"], ".1%")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bits/weight: stored bits per weight of the decoder graph's matrices (linears and lm_head, "
              "scales and zero points included), what a decode step reads per weight.",
              "", "Floor: decoder weight bytes / copy bandwidth (read + write), the least time one decode step can "
              "take. Read floor: the same bytes / the fastest read-only loop on the variants' threads "
              "(machine_peak.py), a tighter bound when reads alone run slower than a copy counts; (x): decode "
              "ms/token / read floor. Each variant measures its read loops in its own process, in turns with its "
              "decode runs (before each and after the last; the fastest sample kept): a shared machine's read "
              "rate swings from second to second, and samples taken beside the decode catch the moments it saw. "
              "Peers' read floors, "
              "and the copy floor, use the samples taken before the variants and after them (the faster kept); "
              "the JSON keeps each variant's ratio to that run-wide read floor too.",
              "", "Follow-up TTFT: time to the first token of a second turn about the same image (history as the "
              "demo sends it: the first answer, then a new question), starting from the first turn's prompt cache."]
    lines += peer_lines(summary)
    return "\n".join(lines) + "\n"


def peer_lines(summary: dict[str, dict]) -> list[str]:
    """What a peer row is, and each variant's decode speed relative to it."""
    lines = []
    for peer_name, peer in summary.items():
        if peer["status"] != "ok" or not peer.get("peer"):
            continue
        key = f"decode_vs_{peer_name}"
        ratios = ", ".join(f"{name} **{row[key]:.2f}x**" for name, row in summary.items()
                           if row["status"] == "ok" and not row.get("peer") and row.get(key))
        lines += ["", f"{peer_name}: a peer measured in this run by its own benchmark tool (llama-bench) on a GGUF "
                  "of the same decoder, same threads, prefill lengths and decode length (decode after a context as "
                  "long as the time-to-first-token prompt; means over its repetitions, so no p90). Decode speed "
                  f"relative to it (its ms/token / the variant's; above 1 is faster): {ratios or 'none measured'}."]
    return lines


def plots(record: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is imported (by the plotting helpers)
    rows = {name: row for name, row in record["summary"].items() if row["status"] == "ok"}
    written = [] if not measured_latency(record) else _latency_plots(record, rows, stem)

    def accuracy(row: dict) -> float:  # task accuracy, else top-1 agreement; the baseline agrees with itself
        return next((value for value in (row["task_accuracy"], row["top1_agreement"]) if value is not None), 1.0)

    written.append(_scatter({name: (row["size_mb"], 100 * accuracy(row)) for name, row in rows.items()},
                            "size on disk (MB)", "task accuracy (%), else top-1 agreement with baseline",
                            "accuracy vs size", stem.with_name(stem.name + "-accuracy-vs-size.png")))
    return written


def _scatter(points: dict[str, tuple[float, float]], xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """One labelled point per variant."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, (x, y) in points.items():
        axis.scatter(x, y)
        axis.annotate(name, (x, y), fontsize=7)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _latency_plots(record: dict, rows: dict[str, dict], stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    names = list(rows)
    written = []
    stages = [key[:-3] for key in next(iter(rows.values()), {}) if key.endswith("_ms") and ":" in key]
    stages += ["ttft", "decode"]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(stages) * len(names) / 3), 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [rows[name].get(f"{s}_ms") or 0 for s in stages]
        axis.bar([j + i * width for j in range(len(stages))], values, width, label=name)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(stages))], [s.replace(":", "\n") for s in stages])
    axis.set_ylabel("ms (median)")
    axis.set_yscale("log")
    axis.set_title(f"latency per stage · {record['name']}")
    axis.legend(fontsize=7)
    figure.tight_layout()
    written.append(_save(figure, stem.with_name(stem.name + "-latency.png")))

    written.append(_scatter({name: (row["peak_rss_mib"], row["tokens_per_s"] or 0) for name, row in rows.items()},
                            "peak RSS (MiB)", "decode tokens/s", "decode speed vs memory",
                            stem.with_name(stem.name + "-decode-vs-memory.png")))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path


def write_report(record: dict, out: Path) -> list[Path]:
    """JSON, Markdown and PNGs under ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{slug(record['name'])}-{machine_slug(record['machine'])}-{record['date']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_text(json_path, json.dumps(record, indent=2, default=float) + "\n")
    atomic_write_text(md_path, markdown(record))
    return [json_path, md_path, *plots(record, stem)]
