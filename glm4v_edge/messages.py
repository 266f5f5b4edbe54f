"""Chat messages in the transformers format, and GLM-4.1V's rules for the media in them.

A message is ``{"role": ..., "content": str | [parts]}``; a part is ``{"type": "text", "text": ...}``,
``{"type": "image", "image": path_or_image}`` or ``{"type": "video", "video": path_or_video}``. A
media part may carry ``"name"``: how errors call its file (a server names the request's part).
"""

from __future__ import annotations

from typing import Any

from glm4v_edge.errors import Glm4vEdgeError

ROLES = ("system", "user", "assistant")
# GLM-4.1V's official demo takes up to 10 images (or one video) per message.
MAX_IMAGES_PER_MESSAGE = 10
MAX_VIDEOS_PER_MESSAGE = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv")


def user_message(text: str, images: list[Any] = (), video: Any = None) -> dict:
    """A user turn: media first, then the question (the order the official demo uses)."""
    content: list[dict] = [{"type": "image", "image": image} for image in images]
    if video is not None:
        content.append({"type": "video", "video": video})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def answer_message(text: str) -> dict:
    """An assistant turn as it goes back into the history: the answer only, never the thinking.
    A plain string: GLM's chat template prints an assistant's content as it is (a list of parts
    would appear as its Python repr)."""
    return {"role": "assistant", "content": text}


def media_kind(part: dict) -> str | None:
    """"image", "video" or None (text and anything else)."""
    kind = part.get("type")
    if kind in ("image", "video"):
        return kind
    if kind is None:
        return "video" if "video" in part else "image" if "image" in part else None
    return None


def check_media_counts(messages: list[dict]) -> None:
    """Refuse over-full messages and mixed image/video conversations before decoding anything."""
    kinds_seen = set()
    for message in messages:
        if message.get("role") not in ROLES:
            raise Glm4vEdgeError(f"unknown message role: {message.get('role')!r}")
        content = message.get("content")
        kinds = [media_kind(part) for part in content] if isinstance(content, list) else []
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
