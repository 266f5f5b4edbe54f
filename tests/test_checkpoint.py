"""Loading: the embedded model goes through the same from_pretrained path as a hub id."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import AutoProcessor, Glm4vForConditionalGeneration

from glm4v_edge import checkpoint
from glm4v_edge.errors import Glm4vEdgeError
from tests.conftest import assert_one_line_error, run_cli


def test_embedded_fixture_loads_with_plain_from_pretrained():
    folder = checkpoint.embedded_model_dir()
    model = Glm4vForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    assert type(processor).__name__ == "Glm4vProcessor"
    assert model.config.model_type == "glm4v"


def test_fixture_is_small_and_safetensors_only():
    folder = checkpoint.embedded_model_dir()
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total <= 10 * 1024 * 1024, total
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_default_dtype_and_device():
    assert checkpoint.default_dtype("cpu") == torch.float32
    assert checkpoint.default_dtype("cuda") == torch.bfloat16
    model = checkpoint.load_model(None, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    model = checkpoint.load_model(None, dtype=torch.bfloat16, device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_special_token_ids_come_from_config_and_tokenizer(tiny_variant):
    tokens = tiny_variant.tokens
    tokenizer = tiny_variant.processor.tokenizer
    config = tiny_variant.model.config
    assert tokens.image == config.image_token_id == tokenizer.convert_tokens_to_ids("<|image|>")
    assert tokens.video_start == tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
    assert tokens.think_open == tokenizer.convert_tokens_to_ids("<think>")
    ends = ("<|endoftext|>", "<|user|>", "<|observation|>")
    assert set(tokens.eos) == {tokenizer.convert_tokens_to_ids(t) for t in ends}
    # The tiny model's ids are its own, not the 9B's (151343 ...): nothing may assume them.
    assert tokens.image != 151343


def test_missing_folder(tmp_path):
    with pytest.raises(Glm4vEdgeError, match="model folder not found"):
        checkpoint.resolve_model(tmp_path / "nowhere")
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path / "nowhere")), "model folder not found")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path)), "no config.json")


def test_folder_of_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path)), "'llama' checkpoint", "glm4v")


def test_hub_id_not_cached_with_hub_offline_mode():
    result = run_cli("chat", "Hi", "--model", checkpoint.HUB_ID)
    assert_one_line_error(result, checkpoint.HUB_ID, "not in the local Hugging Face cache", "HF_HUB_OFFLINE")


class HubLike(BaseHTTPRequestHandler):
    """Answers the hub's file-metadata request for config.json the way huggingface.co does for a
    missing, a gated and a forbidden repository; the slow one never answers in time."""

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        repo = self.path.split("/resolve/")[0].strip("/")
        answers = {"org/missing": (404, "RepoNotFound"), "org/gated": (401, "GatedRepo"), "org/forbidden": (403, None)}
        if repo == "org/slow":
            time.sleep(3)
        status, code = answers.get(repo, (500, None))
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def point_hub_at(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT sets when huggingface_hub is imported."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(monkeypatch):
    """A local endpoint in the hub's place (HF_ENDPOINT), hub access on, a 1 s wait."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), HubLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    yield constants
    server.shutdown()


@pytest.mark.parametrize("repo, fragment", [
    ("org/missing", "no model 'org/missing' on the Hugging Face hub"),
    ("org/gated", "is gated"),
    ("org/forbidden", "not authorised to read model 'org/forbidden' (HTTP 403)"),
    ("org/slow", "did not answer within 1 s"),
])
def test_each_hub_failure_has_its_own_one_line_error(hub, repo, fragment):
    started = time.perf_counter()
    assert_one_line_error(run_cli("chat", "Hi", "--model", repo), repo, fragment)
    assert time.perf_counter() - started < 8  # one request, no retry loop


def test_unreachable_hub_is_a_quick_offline_error(hub, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    point_hub_at(monkeypatch, f"http://127.0.0.1:{closed}")
    started = time.perf_counter()
    assert_one_line_error(run_cli("chat", "Hi", "--model", "org/anything"), "cannot reach the Hugging Face hub",
                          "offline?")
    assert time.perf_counter() - started < 8


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert checkpoint.resolve_model("zai-org/GLM-4.1V-9B-Thinking") == "zai-org/GLM-4.1V-9B-Thinking"
    assert checkpoint.resolve_model(None) == str(checkpoint.embedded_model_dir())
    with pytest.raises(Glm4vEdgeError):
        checkpoint.resolve_model("./relative/missing")


def test_bounded_load_gives_the_from_pretrained_model(tiny_variant):
    """The parity reference's loader (one block of the file at a time) builds the same model."""
    from glm4v_edge.runtime.torch_variant import TorchVariant

    bounded = TorchVariant(None, dtype=torch.float32, device="cpu", bounded_memory=True)
    ours, theirs = bounded.model.state_dict(), tiny_variant.model.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert bounded.model.config.to_dict() == tiny_variant.model.config.to_dict()
