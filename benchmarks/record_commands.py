"""Run commands one after another and record what each cost: wall time, and peak resident memory
of its whole process tree (sampled every 50 ms: parent and children together, as GPTQModel's
child runs beside its parent) beside GNU time's figure for the largest single process.

    python benchmarks/record_commands.py OUT.json --name NAME -- "CMD 1" "CMD 2" ...

The JSON holds each command, its exit status, the figures, the tail of its output, and the
machine. This is how the export and quantization memory figures in README were measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil

from glm4v_edge.files import atomic_write_text
from glm4v_edge.machine import describe_machine

SAMPLE_S = 0.05


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # ended between listing and reading
            total += member.memory_info().rss
    return total


def run(command: str) -> dict:
    log = tempfile.TemporaryFile(mode="w+")
    started = time.perf_counter()
    timed = subprocess.Popen(["/usr/bin/time", "-v", "bash", "-c", command], stdout=log, stderr=subprocess.STDOUT)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        process = psutil.Process(timed.pid)
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(process))
            except psutil.Error:
                return
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = timed.wait()
    done.set()
    sampler.join()
    log.seek(0)
    output = log.read()
    largest = re.search(r"Maximum resident set size \(kbytes\): (\d+)", output)
    return {
        "command": command,
        "exit_status": status,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_tree_rss_mib": round(peak / 2**20),
        "largest_process_rss_mib": round(int(largest.group(1)) / 1024) if largest else None,
        "output_tail": output.split("\tCommand being timed")[0][-3000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("commands", nargs="+")
    args = parser.parse_args()
    runs = []
    for command in args.commands:
        print(f"running: {command}", file=sys.stderr, flush=True)
        runs.append(run(command))
        print(f"  status {runs[-1]['exit_status']}, {runs[-1]['wall_s']} s, "
              f"peak tree RSS {runs[-1]['peak_tree_rss_mib']} MiB", file=sys.stderr, flush=True)
        record = {"name": args.name, "date": date.today().isoformat(), "runs": runs, "machine": describe_machine()}
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")  # written after each command


if __name__ == "__main__":
    main()
