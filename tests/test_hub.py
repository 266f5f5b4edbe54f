"""Artifacts by hub repo id, tested without the hub: huggingface_hub's real download path against
a local stand-in (tests/hub_stub.py), its real cache, offline mode, and every error by its cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glm4v_edge import hub
from glm4v_edge.bench.settings import BenchSettings
from glm4v_edge.demo.catalog import VariantCatalog
from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.manifest import MANIFEST, read_manifest
from glm4v_edge.names import files_for
from glm4v_edge.progress import LatestLine
from glm4v_edge.runtime.registry import load_from
from tests.conftest import assert_one_line_error, run_cli
from tests.hub_stub import HubStub

DATA = Path(__file__).parent / "data"
SHARED = ["chat_template.jinja", "config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
          "tokenizer_config.json"]
QUESTION = ("How many shapes are in the image?", "--image", "examples/count-shapes.png")


@pytest.fixture
def stub(monkeypatch, tmp_path):
    """A local hub (what HF_ENDPOINT would point at), hub access on, an empty cache of this test's."""
    from huggingface_hub import constants

    server = HubStub()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub.hub_manifest.cache_clear()
    yield server
    server.stop()
    hub.hub_manifest.cache_clear()


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.hub_manifest.cache_clear()


def test_repo_ids_and_folders_are_told_apart(tmp_path):
    assert hub.hub_reference("glm4v-edge/tiny") == hub.HubArtifacts("glm4v-edge/tiny", None)
    assert hub.hub_reference("glm4v-edge/tiny@v1.0") == hub.HubArtifacts("glm4v-edge/tiny", "v1.0")
    assert hub.hub_reference(tmp_path) is None  # a folder that exists is a folder
    assert hub.hub_reference("artifacts/tiny/extra") is None and hub.hub_reference(None) is None


def test_each_variant_is_given_exactly_the_files_it_opens(artifacts):
    """Against real manifests: the session's build (five precisions and GPTQ) and a medium q4 export."""
    manifest = read_manifest(artifacts)
    q4 = ["onnx/vision_encoder_q4.onnx", "onnx/embed_tokens_q4.onnx", "onnx/decoder_model_merged_q4.onnx"]
    assert sorted(files_for(manifest, "onnx-q4")) == sorted(SHARED + q4)
    assert sorted(files_for(manifest, "onnx-q4", vision_dtype="fp16")) == sorted(
        SHARED + ["onnx/vision_encoder_fp16.onnx", *q4[1:]])
    gptq = files_for(manifest, "gptq-int4")
    assert gptq and all(name.startswith("gptq-int4/") for name in gptq)
    assert gptq == [name for name in manifest["files"] if name.startswith("gptq-int4/")]
    assert files_for(manifest, "torch") == []
    medium = json.loads((DATA / "medium-q4-manifest.json").read_text())  # its decoder has external data
    assert sorted(files_for(medium, "onnx-q4")) == sorted(
        SHARED + q4 + ["onnx/decoder_model_merged_q4.onnx_data"])


@pytest.mark.parametrize("variant", ["onnx-q4", "gptq-int4"])
def test_those_files_are_enough_to_answer(artifacts, tmp_path, variant):
    manifest = read_manifest(artifacts)
    for name in [MANIFEST, *files_for(manifest, variant)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(artifacts / name, tmp_path / name)
    result = run_cli("chat", *QUESTION, "--variant", variant, "--artifacts", str(tmp_path), "--greedy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].strip() == "3"


def test_chat_from_a_hub_repo_fetches_only_the_q4_files_then_runs_offline(stub, artifacts, monkeypatch):
    commit = stub.add("glm4v-edge/tiny", artifacts)
    online = run_cli("chat", *QUESTION, "--variant", "onnx-q4", "--artifacts", "glm4v-edge/tiny", "--greedy")
    assert online.returncode == 0, online.stderr
    assert online.stdout.strip().splitlines()[-1].strip() == "3"
    fetched = [path for _, path in stub.fetched]
    assert sorted(fetched) == sorted([MANIFEST, *files_for(read_manifest(artifacts), "onnx-q4")])

    stub.stop()  # no hub at all now: the cache alone, as HF_HUB_OFFLINE=1 reads it
    go_offline(monkeypatch)
    for reference in ("glm4v-edge/tiny", f"glm4v-edge/tiny@{commit}"):
        offline = run_cli("chat", *QUESTION, "--variant", "onnx-q4", "--artifacts", reference, "--greedy")
        assert offline.returncode == 0, offline.stderr
        assert offline.stdout == online.stdout  # the reply (the speed line goes to stderr)
    # What the run reports: the commit it read, not just the branch.
    variant = load_from("onnx-q4", None, "glm4v-edge/tiny", device="cpu")
    assert variant.details["artifacts"] == f"glm4v-edge/tiny@{commit}"
    # Another precision was never fetched, so offline it is a clear error, not a download.
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "onnx-fp16", "--artifacts", "glm4v-edge/tiny"),
                          "onnx/", "not in the local Hugging Face cache", "HF_HUB_OFFLINE")


def test_the_demo_offers_what_the_repo_holds_and_fetches_a_variant_when_chosen(stub, artifacts):
    stub.add("glm4v-edge/tiny", artifacts)
    catalog = VariantCatalog(DemoSettings(artifacts=Path("glm4v-edge/tiny"), prompt_cache_gb=0))
    assert catalog.names() == ["torch", "onnx-fp32", "onnx-fp16", "onnx-q4", "onnx-q4f16", "onnx-int8", "gptq-int4"]
    assert [path for _, path in stub.fetched] == [MANIFEST]  # choosing what to offer reads the manifest only
    status = LatestLine()
    catalog.load("onnx-int8", status)
    wanted = files_for(read_manifest(artifacts), "onnx-int8")
    assert sorted(path for _, path in stub.fetched[1:]) == sorted(wanted)
    assert status.done == status.total == len(wanted) and "downloading onnx-int8 from glm4v-edge/tiny" in status.line


def test_the_bench_reports_the_commit_and_writes_beside_the_repo_name(stub, artifacts):
    stub.add("glm4v-edge/tiny", artifacts)
    assert BenchSettings(Path("glm4v-edge/tiny")).results_folder == Path("artifacts/tiny/bench")
    assert hub.pinned("glm4v-edge/tiny").startswith("glm4v-edge/tiny@c0ffee")


@pytest.mark.parametrize("repo, fragments", [
    ("someone/missing", ["no model repo 'someone/missing' on the Hugging Face hub", "HF_TOKEN"]),
    ("someone/gated", ["'someone/gated' is gated", "HF_TOKEN"]),
    ("someone/private", ["not authorised to read model repo 'someone/private' (HTTP 403)", "HF_TOKEN"]),
    ("someone/not-an-export", ["has no manifest.json: it is not a glm4v-edge export"]),
    ("glm4v-edge/tiny@v9", ["no such revision"]),
])
def test_each_hub_problem_is_one_line_naming_its_cause(stub, artifacts, tmp_path, repo, fragments):
    stub.add("glm4v-edge/tiny", artifacts)
    stub.gated.add("someone/gated")
    stub.forbidden.add("someone/private")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    stub.add("someone/not-an-export", tmp_path / "plain")
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "onnx-q4", "--artifacts", repo), *fragments)


def test_offline_and_not_cached_is_one_line(stub, monkeypatch):
    go_offline(monkeypatch)
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "onnx-q4", "--artifacts", "glm4v-edge/tiny"),
                          "'glm4v-edge/tiny' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")


def test_a_file_that_does_not_match_is_refused_and_dropped_from_the_cache(stub, artifacts):
    stub.add("glm4v-edge/tiny", artifacts)
    stub.replaced[("glm4v-edge/tiny", "onnx/embed_tokens_q4.onnx")] = b"not the exported graph"
    bad = run_cli("chat", "Hi", "--variant", "onnx-q4", "--artifacts", "glm4v-edge/tiny")
    assert_one_line_error(bad, "onnx/embed_tokens_q4.onnx of glm4v-edge/tiny", "does not match manifest.json",
                          "removed from the cache")
    del stub.replaced[("glm4v-edge/tiny", "onnx/embed_tokens_q4.onnx")]
    again = run_cli("chat", *QUESTION, "--variant", "onnx-q4", "--artifacts", "glm4v-edge/tiny", "--greedy")
    assert again.returncode == 0, again.stderr  # fetched again, whole this time
    assert [path for _, path in stub.fetched].count("onnx/embed_tokens_q4.onnx") == 2


def test_too_little_disk_is_refused_before_any_download(stub, artifacts, tmp_path):
    huge = tmp_path / "huge"
    shutil.copytree(artifacts, huge)
    manifest = read_manifest(huge)
    manifest["files"]["onnx/decoder_model_merged_q4.onnx"]["bytes"] = 10**16  # 10 PB
    (huge / MANIFEST).write_text(json.dumps(manifest))
    stub.add("glm4v-edge/huge", huge)
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "onnx-q4", "--artifacts", "glm4v-edge/huge"),
                          "needs 10000000.0 GB more in the Hugging Face cache", "HF_HUB_CACHE")
    assert [path for _, path in stub.fetched] == [MANIFEST]


def test_a_space_serves_a_model_repo(stub, artifacts, tmp_path):
    """app.py as a Space runs it, its settings from the environment, GLM4V_EDGE_ARTIFACTS=user/repo:
    choosing onnx-q4 downloads its files alone (huggingface_hub in the Space's process) and it
    answers."""
    import os
    import subprocess
    import sys
    import tempfile

    from gradio_client import Client, handle_file

    from glm4v_edge.demo.examples import load_examples
    from tests.servers import free_port, wait_until_up

    stub.add("glm4v-edge/tiny", artifacts)
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": stub.endpoint, "HF_HUB_CACHE": str(tmp_path / "space-cache"),
           "GLM4V_EDGE_ARTIFACTS": "glm4v-edge/tiny", "GLM4V_EDGE_VARIANT": "onnx-q4"}
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=Path(__file__).resolve().parents[1], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/", process)
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            assert "**onnx-q4** ready" in client.predict("onnx-q4", api_name="/select_variant")
            example = load_examples()[0]
            chat, _ = client.predict({"text": example.question, "files": [handle_file(str(example.files[0]))]}, [],
                                     "onnx-q4", "", 8192, 128, 0.0, 1.0, api_name="/chat")
            assert example.answer in "".join(part["text"] for part in chat[-1]["content"])
            fetched = sorted({path for _, path in stub.fetched})
            assert fetched == sorted([MANIFEST, *files_for(read_manifest(artifacts), "onnx-q4")])
            # The repo's GPTQ checkpoint is offered too (its packages are installed here); loading it
            # from the hub is tested in process (test_those_files_are_enough_to_answer).
            offered = {value for component in client.config["components"]
                       for _, value in component.get("props", {}).get("choices") or []}
            assert {"onnx-q4", "gptq-int4"} <= offered, offered
        finally:
            process.terminate()
            process.wait(timeout=30)
