"""The demo's example prompts: held-out questions of the embedded model's task, media bundled.

``python -m glm4v_edge.demo.examples`` rewrites the bundled files from the task generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.files import atomic_write_text

EXAMPLES_DIR = Path(__file__).parent / "examples"
CHOSEN = (("count", 1), ("color", 1), ("two_images", 0), ("shape", 2), ("motion", 0))  # (question type, index)


@dataclass(frozen=True)
class Example:
    question: str
    files: tuple[Path, ...]
    answer: str  # what the embedded model is expected to answer

    def textbox_value(self) -> dict:
        return {"text": self.question, "files": [str(f) for f in self.files]}


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    records = json.loads((folder / "examples.json").read_text())
    return [Example(r["question"], tuple(folder / f for f in r["files"]), r["answer"]) for r in records]


def write_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    from glm4v_edge.shapes import write_sample

    records = []
    for qtype, index in CHOSEN:
        sample, files = write_sample(folder, qtype, index)
        records.append({"question": sample.question, "files": [f.name for f in files], "answer": sample.answer})
    atomic_write_text(folder / "examples.json", json.dumps(records, indent=1) + "\n")
    return load_examples(folder)


if __name__ == "__main__":
    for example in write_examples():
        print(example.question, [f.name for f in example.files], "->", example.answer)
