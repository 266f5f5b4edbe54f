"""The embedded model renders prompts exactly as the official GLM-4.1V chat template does."""

import hashlib
from importlib import resources

import pytest
from PIL import Image

from glm4v_edge.runtime.inputs import build_batch

# sha256 of the official template (shared/reference/glm41v_chat_template.jinja).
OFFICIAL_TEMPLATE_SHA256 = "847603d3ed14387a2b45c197f8d07ddee0f9938051549c727cbc894facfea78b"

CASES = {
    "text": (
        [{"role": "user", "content": "How many shapes?"}],
        "[gMASK]<sop><|user|>\nHow many shapes?<|assistant|>\n",
    ),
    "image": (
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}],
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>How many shapes?<|assistant|>\n",
    ),
    "two_images": (
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}],
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>"
        "<|begin_of_image|><|image|><|end_of_image|>Compare.<|assistant|>\n",
    ),
    "video": (
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]}],
        "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>Which way?<|assistant|>\n",
    ),
    "system_and_history": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\n<|begin_of_image|><|image|><|end_of_image|>Q1"
        "<|assistant|>\nA1<|user|>\nQ2<|assistant|>\n",
    ),
}


def test_shipped_template_is_the_official_one(tiny_processor):
    shipped = resources.files("glm4v_edge.tiny").joinpath("glm41v_chat_template.jinja").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == OFFICIAL_TEMPLATE_SHA256
    assert tiny_processor.chat_template == shipped.decode()


@pytest.mark.parametrize("case", CASES)
def test_rendering_matches_the_official_template(tiny_processor, case):
    messages, expected = CASES[case]
    assert tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_image_placeholder_expands_to_one_token_per_merged_patch(tiny_processor):
    image = Image.new("RGB", (224, 112), "white")  # 16 x 8 patches -> 8 x 4 merged tokens
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    batch = build_batch(tiny_processor, [messages])
    ids = batch["input_ids"][0].tolist()
    tokenizer = tiny_processor.tokenizer
    begin, end = ids.index(tokenizer.convert_tokens_to_ids("<|begin_of_image|>")), ids.index(
        tokenizer.convert_tokens_to_ids("<|end_of_image|>"))
    assert batch["image_grid_thw"].tolist() == [[1, 8, 16]]
    assert ids[begin + 1:end] == [tokenizer.convert_tokens_to_ids("<|image|>")] * 32


def test_special_tokens_are_single_tokens(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    for token in ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                  "<|image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|video|>", "<|end_of_video|>",
                  "<think>", "</think>", "<answer>", "</answer>", "<|begin_of_box|>", "<|end_of_box|>",
                  "<|endoftext|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token


def test_an_answer_in_the_history_is_rendered_as_text(tiny_processor):
    """GLM's template prints an assistant's content as it is: the history holds plain strings."""
    from glm4v_edge.messages import answer_message, user_message

    text = tiny_processor.apply_chat_template([user_message("Hi"), answer_message("3"), user_message("And?")],
                                              tokenize=False, add_generation_prompt=True)
    assert "<|assistant|>\n3" in text and "'type'" not in text
