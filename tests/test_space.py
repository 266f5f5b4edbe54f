"""The repository works as a Hugging Face Space: front matter, requirements, and app.py serving."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from gradio_client import Client, handle_file

from glm4v_edge.demo.examples import load_examples
from tests.servers import free_port, wait_until_up

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


def test_app_py_serves_a_build_with_every_variant_it_offers(artifacts):
    """As a Space with GLM4V_EDGE_ARTIFACTS set: the build's GPTQ checkpoint is offered (its packages
    are installed here) and answers; the demo's catalog hides what is not installed (test_demo)."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "1",
           "GLM4V_EDGE_ARTIFACTS": str(artifacts)}
    for variable in ("GLM4V_EDGE_MODEL", "GLM4V_EDGE_VARIANT", "GLM4V_EDGE_REMOTE_URL"):
        env.pop(variable, None)
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/", process)
            example = load_examples()[0]
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            assert "**gptq-int4** ready" in client.predict("gptq-int4", api_name="/select_variant")
            chat, _ = client.predict(
                {"text": example.question, "files": [handle_file(str(example.files[0]))]}, [], "gptq-int4", "",
                8192, 128, 0.0, 1.0, api_name="/chat")
            answer = "".join(part["text"] for part in chat[-1]["content"])
            assert example.answer in answer and "gptq-int4" in answer
        finally:
            process.terminate()
            process.wait(timeout=30)
