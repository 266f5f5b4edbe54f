"""The repository works as a Hugging Face Space: front matter and requirements (app.py serving a
model repo as a Space runs it: tests/test_hub.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    block = text.split("---\n", 2)[1]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def test_readme_front_matter_declares_a_gradio_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gradio_pin = next(d for d in project["optional-dependencies"]["demo"] if d.startswith("gradio"))
    assert meta["sdk_version"].startswith(gradio_pin.split(">=")[1].split(",")[0])
    assert meta["suggested_hardware"]


def test_requirements_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["onnx"] + \
        project["optional-dependencies"]["demo"]
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == expected
