"""Chat messages -> the processor's batch (ids, pixels, grids), the same for every variant.

Media items may be paths (loaded and checked here) or already-decoded objects. The chat
template and all image/video preprocessing are the checkpoint's own processor's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

from glm4v_edge.checkpoint import quiet_transformers
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import Video, load_image, load_video, to_rgb

# GLM-4.1V's official demo takes up to 10 images (or one video) per message.
MAX_IMAGES_PER_MESSAGE = 10
MAX_VIDEOS_PER_MESSAGE = 1


def _media_kind(item: dict) -> str | None:
    kind = item.get("type")
    if kind in ("image", "video"):
        return kind
    if kind is None:
        return "video" if "video" in item else "image" if "image" in item else None
    return None


def _load_media(item: dict, kind: str, processor) -> Image.Image | Video:
    value = item.get(kind, item.get("path", item.get("url")))
    if isinstance(value, (str, Path)):
        if str(value).startswith(("http://", "https://")):
            raise Glm4vEdgeError(f"download the {kind} first; glm4v-edge reads local files only: {value}")
        if kind == "image":
            return load_image(value)
        return load_video(value, sample_indices_fn=processor.video_processor.sample_frames)
    if kind == "image" and isinstance(value, Image.Image):
        return to_rgb(value)
    if kind == "video" and isinstance(value, Video):
        return value
    raise Glm4vEdgeError(f"unsupported {kind} value of type {type(value).__name__}; pass a file path")


def check_media_counts(messages: list[dict]) -> None:
    """Refuse over-full messages and mixed image/video conversations before decoding anything."""
    kinds_seen = set()
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant"):
            raise Glm4vEdgeError(f"unknown message role: {message.get('role')!r}")
        content = message.get("content")
        kinds = [_media_kind(item) for item in content] if isinstance(content, list) else []
        if kinds.count("image") > MAX_IMAGES_PER_MESSAGE:
            raise Glm4vEdgeError(
                f"{kinds.count('image')} images in one message; GLM-4.1V takes at most {MAX_IMAGES_PER_MESSAGE}"
            )
        if kinds.count("video") > MAX_VIDEOS_PER_MESSAGE:
            raise Glm4vEdgeError(f"{kinds.count('video')} videos in one message; GLM-4.1V takes one video per message")
        kinds_seen.update(kind for kind in kinds if kind)
    if kinds_seen == {"image", "video"}:
        # transformers' GLM-4.1V marks video frames with the image token, so one forward
        # pass cannot place image and video features apart.
        raise Glm4vEdgeError("a conversation can hold images or videos, not both; start a new chat for the other")


def resolve_media(messages: list[dict], processor) -> tuple[list[dict], list[Image.Image], list[Video]]:
    """Load every image and video in the conversation, in order."""
    check_media_counts(messages)
    images: list[Image.Image] = []
    videos: list[Video] = []
    resolved = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            resolved.append(message)
            continue
        new_content = []
        for item in content:
            kind = _media_kind(item)
            if kind is None:
                new_content.append(item)
                continue
            media = _load_media(item, kind, processor)
            (images if kind == "image" else videos).append(media)
            new_content.append({"type": kind, kind: media})
        resolved.append({**message, "content": new_content})
    return resolved, images, videos


def context_length(config) -> int:
    return config.text_config.max_position_embeddings


def build_batch(
    processor, conversations: list[list[dict]], *, add_generation_prompt: bool = True,
    continuations: list[str] | None = None, max_positions: int | None = None,
) -> BatchFeature:
    """Render each conversation with the chat template and run the processor on all of them.

    ``continuations`` (teacher forcing) are appended to the rendered prompts. Batches are
    left-padded. ``max_positions`` (the model's context) turns an over-long prompt into an error.
    """
    texts, images, videos = [], [], []
    for i, messages in enumerate(conversations):
        resolved, conv_images, conv_videos = resolve_media(messages, processor)
        text = processor.apply_chat_template(resolved, tokenize=False, add_generation_prompt=add_generation_prompt)
        texts.append(text + (continuations[i] if continuations else ""))
        images += conv_images
        videos += conv_videos
    if images and videos:
        raise Glm4vEdgeError("a batch can hold images or videos, not both")
    try:
        with quiet_transformers():  # its over-length warning is replaced by the clear error below
            batch = processor(
                text=texts,
                images=images or None,
                videos=[v.frames for v in videos] or None,
                video_metadata=[v.metadata for v in videos] or None,
                do_sample_frames=False,  # frames were sampled when the video was read
                padding=True,
                return_tensors="pt",
            )
    except ValueError as error:
        raise Glm4vEdgeError(f"the processor rejected the input: {str(error).splitlines()[0]}") from None
    length = batch["input_ids"].shape[1]
    if max_positions is not None and length >= max_positions:
        raise Glm4vEdgeError(
            f"prompt is {length} tokens; the model's context is {max_positions} tokens "
            "(shorten the text or use fewer or smaller images)"
        )
    return batch


def user_message(text: str, images: list[Any] = (), video: Any = None) -> dict:
    """A user turn: media first, then the question (the order the official demo uses)."""
    content: list[dict] = [{"type": "image", "image": image} for image in images]
    if video is not None:
        content.append({"type": "video", "video": video})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def extend_batch(batch: BatchFeature, token_ids: list[int]) -> BatchFeature:
    """Append exact token ids (text, never media) to every row: teacher forcing without re-tokenising."""
    rows = batch["input_ids"].shape[0]
    extra = torch.tensor([token_ids] * rows, dtype=batch["input_ids"].dtype)
    extended = dict(batch)
    extended["input_ids"] = torch.cat([batch["input_ids"], extra], dim=1)
    extended["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in batch:
        extended["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    return BatchFeature(extended)
