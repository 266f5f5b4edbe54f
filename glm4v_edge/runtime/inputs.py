"""Chat messages -> the processor's batch (ids, pixels, grids), the same for every variant.

Media items may be paths (loaded and checked here) or already-decoded objects. The chat
template and all image/video preprocessing are the checkpoint's own processor's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import BatchFeature

from glm4v_edge.checkpoint import quiet_transformers
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.media import Video, load_image, load_video, to_rgb
from glm4v_edge.messages import check_media_counts, media_kind


def _load_media(item: dict, kind: str, processor) -> Image.Image | Video:
    value = item.get(kind, item.get("path", item.get("url")))
    if isinstance(value, (str, Path)):
        if str(value).startswith(("http://", "https://")):
            raise Glm4vEdgeError(f"download the {kind} first; glm4v-edge reads local files only: {value}")
        if kind == "image":
            return load_image(value, item.get("name"))
        return load_video(value, sample_indices_fn=processor.video_processor.sample_frames, name=item.get("name"))
    if kind == "image" and isinstance(value, Image.Image):
        return to_rgb(value)
    if kind == "video" and isinstance(value, Video):
        return value
    raise Glm4vEdgeError(f"unsupported {kind} value of type {type(value).__name__}; pass a file path")


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
            kind = media_kind(item)
            if kind is None:
                new_content.append(item)
                continue
            media = _load_media(item, kind, processor)
            (images if kind == "image" else videos).append(media)
            new_content.append({"type": kind, kind: media})
        resolved.append({**message, "content": new_content})
    return resolved, images, videos


def build_batch(
    processor, conversations: list[list[dict]], *, continue_final_message: bool = False,
    continuations: list[str] | None = None, max_positions: int | None = None,
) -> BatchFeature:
    """Render each conversation with the chat template and run the processor on all of them.

    ``continuations`` (teacher forcing) are appended to the rendered prompts. Batches are
    left-padded. ``max_positions`` (the model's context) turns an over-long prompt into an error.
    """
    texts, images, videos = [], [], []
    for i, messages in enumerate(conversations):
        resolved, conv_images, conv_videos = resolve_media(messages, processor)
        # A final assistant turn to continue is rendered open: no end of turn, no new assistant header.
        text = processor.apply_chat_template(resolved, tokenize=False, add_generation_prompt=not continue_final_message,
                                             continue_final_message=continue_final_message)
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
        raise Glm4vEdgeError(f"the processor rejected the input: {first_line(error)}") from None
    length = batch["input_ids"].shape[1]
    if max_positions is not None and length >= max_positions:
        raise Glm4vEdgeError(
            f"prompt is {length} tokens; the model's context is {max_positions} tokens "
            "(shorten the text or use fewer or smaller images)"
        )
    return batch


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
