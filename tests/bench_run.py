"""The benchmark end to end, run by conftest in the background as soon as the session's build is
done (its variants' processes are mostly imports: they overlap the tests in the foreground).

One run on a copy of the build whose int8 decoder is truncated: the baseline, a healthy variant
taken from the intact build (NAME@FOLDER), and the broken one (its own process fails; the report
says so and the others complete). tests/test_bench.py checks what it wrote.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

BROKEN_GRAPH = "onnx/decoder_model_merged_int8.onnx"


def run(artifacts: Path, out: Path) -> None:
    from glm4v_edge.cli import main

    broken = out / "tiny"
    shutil.copytree(artifacts, broken)
    (broken / BROKEN_GRAPH).write_bytes(b"\0" * 100)
    healthy = out / "healthy"
    healthy.symlink_to(artifacts, target_is_directory=True)
    main(["bench", "--artifacts", str(broken), "--prompts", "quick", "--runs", "1", "--task-questions", "3",
          "--variants", f"onnx-fp32@{healthy},onnx-int8", "--fidelity-prompts", "1"])


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
