"""Chat messages between the transformers format and the OpenAI chat-completions format.

The remote variant sends our messages to an OpenAI-compatible server (vLLM, SGLang,
``glm4v-edge serve``) with media inlined as data URLs; ``glm4v-edge serve`` turns them back.
Nothing here downloads: only data URLs are accepted.
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
from pathlib import Path

from PIL import Image

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import Video, check_file, load_image
from glm4v_edge.messages import check_media_counts

# The part types vLLM's OpenAI server takes for images and videos.
IMAGE_PART, VIDEO_PART = "image_url", "video_url"
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
            "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov"}


def data_url(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image_data_url(image: str | Path | Image.Image) -> str:
    """A checked, RGB PNG data URL for an image file or Pillow image."""
    image = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_url(buffer.getvalue(), "image/png")


def video_data_url(video: str | Path) -> str:
    if isinstance(video, Video):
        raise Glm4vEdgeError("the remote variant sends video files; pass the video's path")
    path = check_file(video, "video")
    mime = mimetypes.guess_type(path.name)[0] or "video/mp4"
    return data_url(path.read_bytes(), mime)


def to_openai_messages(messages: list[dict]) -> list[dict]:
    """Transformers-format messages -> OpenAI chat messages (text parts + data-URL media parts)."""
    check_media_counts(messages)
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        parts = []
        for item in content:
            kind = item.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": item["text"]})
            elif kind == "image":
                parts.append({"type": IMAGE_PART, IMAGE_PART: {"url": image_data_url(item["image"])}})
            elif kind == "video":
                parts.append({"type": VIDEO_PART, VIDEO_PART: {"url": video_data_url(item["video"])}})
            else:
                raise Glm4vEdgeError(f"unknown message part type {kind!r}")
        converted.append({"role": message["role"], "content": parts})
    return converted


def decode_data_url(url: str) -> tuple[bytes, str]:
    """``data:<mime>;base64,<payload>`` -> (bytes, mime). Anything else is refused."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "a path"
        raise Glm4vEdgeError(f"media must be inlined as a base64 data URL (got {scheme}); this server does not fetch")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise Glm4vEdgeError("media data URL must be base64-encoded")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Glm4vEdgeError("media data URL holds invalid base64") from None
    if not data:
        raise Glm4vEdgeError("media data URL is empty (0 bytes)")
    return data, header[len("data:"):-len(";base64")]


def from_openai_messages(messages: list[dict], folder: Path) -> list[dict]:
    """OpenAI chat messages -> transformers-format messages; media written as files under ``folder``.

    Assistant and system turns keep only their text, as a plain string (GLM's chat template prints
    their content as it is).
    """
    converted = []
    for number, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise Glm4vEdgeError(f"message {number}: unsupported role {role!r}")
        if content is None:
            content = ""
        if not isinstance(content, (str, list)):
            raise Glm4vEdgeError(f"message {number}: content must be a string or a list of parts")
        if role != "user":
            text = content if isinstance(content, str) else "".join(
                part.get("text", "") for part in content if isinstance(part, dict))
            converted.append({"role": role, "content": text})
            continue
        if isinstance(content, str):
            converted.append({"role": role, "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part_number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind in (IMAGE_PART, VIDEO_PART):
                url = (part.get(kind) or {}).get("url", "")
                try:
                    data, mime = decode_data_url(url)
                except Glm4vEdgeError as error:
                    raise Glm4vEdgeError(f"messages[{number}].content[{part_number}]: {error}") from None
                media = "image" if kind == IMAGE_PART else "video"
                path = folder / f"{number}-{part_number}{SUFFIXES.get(mime, '.bin')}"
                path.write_bytes(data)
                # Errors about the file name the request's part, not the server's temporary path.
                parts.append({"type": media, media: str(path), "name": f"messages[{number}].content[{part_number}]"})
            else:
                raise Glm4vEdgeError(f"message {number}: unsupported content part type {kind!r}")
        converted.append({"role": role, "content": parts})
    return converted
