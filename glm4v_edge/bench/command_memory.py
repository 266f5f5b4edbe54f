"""Run commands one after another and record what each cost (``glm4v-edge bench record``): wall
time, peak resident memory of its whole process tree (sampled every 50 ms: parent and children
together, as GPTQModel's child runs beside its parent), and the largest single process's peak
(GNU time's figure: not ``os.wait4``'s, whose child inherits this process's own peak across
fork and exec). This is how the export and quantization memory figures were measured.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.bench.local_server import PeakSampler, status_mib
from glm4v_edge.bench.records import heading, new_record, plain, table
from glm4v_edge.progress import SILENT, Progress

KIND = "record"
GNU_TIME = "/usr/bin/time"
OUTPUT_TAIL = 3000  # characters of each command's output kept


@dataclass(frozen=True)
class CommandMemorySettings:
    name: str
    commands: tuple[str, ...]  # each run by bash -c
    out: Path | None = None


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants now, from /proc (a process started meanwhile is seen next sample)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after the name, which may hold spaces
        except (OSError, IndexError, ValueError):
            continue  # ended while listed
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        tree.append(pid)
        waiting += children.get(pid, [])
    return tree


def tree_rss_mib(root: int) -> float:
    return sum(status_mib(pid, "VmRSS") or 0.0 for pid in process_tree(root))


def run_command(command: str) -> dict:
    """One command through bash (under GNU time where it is installed): its status, wall time,
    memory and the tail of its output."""
    with tempfile.TemporaryFile(mode="w+") as log, tempfile.NamedTemporaryFile(mode="r") as report:
        argv = ["bash", "-c", command]
        if Path(GNU_TIME).is_file():  # it writes its figures to the report, not into the command's output
            argv = [GNU_TIME, "-v", "-o", report.name, *argv]
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        sampler = PeakSampler(lambda: tree_rss_mib(process.pid))
        status = process.wait()
        wall_s = time.perf_counter() - started
        peak_mib = sampler.stop()
        log.seek(0)
        output = log.read()
        largest = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read())
    return {"command": command, "exit_status": status, "wall_s": round(wall_s, 1),
            "peak_tree_rss_mib": round(peak_mib),
            "largest_process_rss_mib": round(int(largest.group(1)) / 1024) if largest else None,
            "output_tail": output[-OUTPUT_TAIL:]}


def record_commands(settings: CommandMemorySettings, progress: Progress = SILENT,
                    save: Callable[[dict], object] = lambda record: None) -> dict:
    """Every command in turn; ``save`` gets the record after each, so a long series keeps what it measured."""
    record = new_record(KIND, settings.name, "wall time and peak memory of commands run one after another",
                        plain(settings))
    record["runs"] = []
    progress.start(KIND, len(settings.commands))
    for command in settings.commands:
        progress.step(f"running: {command}")
        record["runs"].append(run_command(command))
        if record["runs"][-1]["exit_status"] != 0:
            progress.warn(f"{command!r} exited with status {record['runs'][-1]['exit_status']}")
        save(record)
    return record


def markdown(record: dict) -> str:
    rows = [[f"`{run['command']}`", run["exit_status"], run["wall_s"], run["peak_tree_rss_mib"],
             run["largest_process_rss_mib"]] for run in record["runs"]]
    lines = heading(record) + table(["command", "exit status", "wall s", "peak tree RSS MiB",
                                     "largest process RSS MiB"], rows)
    return "\n".join(lines) + "\n"
