"""Files a chat user uploads -> checked message parts.

Only files inside Gradio's upload cache are read (a client cannot name another path), each
within the size limit; images are decoded here so a bad one is refused before the model runs;
a PDF becomes one image per page (pypdfium2), written beside it in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.media import check_file, load_image, probe_video
from glm4v_edge.messages import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_media_counts, user_message

PDF_SUFFIXES = (".pdf",)
ACCEPTED_SUFFIXES = sorted({*IMAGE_SUFFIXES, *VIDEO_SUFFIXES, *PDF_SUFFIXES})
PDF_PAGE_LONG_SIDE = 1600  # pixels; the processor resizes further to its own budget


@dataclass
class UserTurn:
    text: str
    images: list[Path] = field(default_factory=list)
    video: Path | None = None

    def message(self) -> dict:
        """The user turn in the transformers format: media first, then the question."""
        return user_message(self.text, images=[str(path) for path in self.images],
                            video=str(self.video) if self.video else None)

    def files(self) -> list[Path]:
        return [*self.images, *([self.video] if self.video else [])]


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def uploaded_path(item, upload_folder: Path, max_bytes: int) -> Path:
    raw = item.get("path") if isinstance(item, dict) else item
    if not raw:
        raise Glm4vEdgeError("an uploaded file has no path")
    path = Path(raw)
    if not inside(path, upload_folder):
        raise Glm4vEdgeError(f"{path.name}: only files uploaded through the page can be read")
    checked(path, lambda p: check_file(p, "uploaded"))
    if path.stat().st_size > max_bytes:
        raise Glm4vEdgeError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB; the limit is "
                             f"{max_bytes // 2**20} MiB per file")
    return path


def pdf_pages(path: Path, limit: int) -> list[Path]:
    """Each page as a PNG beside the PDF (in the upload cache); more than ``limit`` pages is an error."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as error:
        raise Glm4vEdgeError(f"{path.name} is not a readable PDF ({error})") from None
    try:
        if len(document) == 0:
            raise Glm4vEdgeError(f"{path.name} has no pages")
        if len(document) > limit:
            raise Glm4vEdgeError(f"{path.name} has {len(document)} pages, more than the {limit} images "
                                 "this message has room for")
        folder = path.with_name(f"{path.stem}-pages")
        folder.mkdir(exist_ok=True)
        pages = []
        for number in range(len(document)):
            page = document[number]
            scale = min(2.0, PDF_PAGE_LONG_SIDE / max(page.get_size()))  # 144 dpi, capped
            image = page.render(scale=scale).to_pil().convert("RGB")
            target = folder / f"page-{number + 1}.png"
            image.save(target)
            pages.append(target)
        return pages
    finally:
        document.close()


def checked(path: Path, check) -> None:
    """Run a media check; its error names the file, not the server's cache path."""
    try:
        check(path)
    except Glm4vEdgeError as error:
        raise Glm4vEdgeError(str(error).replace(str(path), path.name)) from None


def read_user_turn(message: dict, settings: DemoSettings, upload_folder: Path) -> UserTurn:
    """A MultimodalTextbox value -> a checked ``UserTurn``; a one-line ``Glm4vEdgeError`` otherwise."""
    text = (message or {}).get("text") or ""
    items = (message or {}).get("files") or []
    if not text.strip() and not items:
        raise Glm4vEdgeError("type a question (and attach images, a video or a PDF if you like)")
    turn = UserTurn(text=text.strip())
    max_bytes = settings.max_file_mb * 2**20
    paths = [uploaded_path(item, upload_folder, max_bytes) for item in items]
    unknown = [p.name for p in paths if p.suffix.lower() not in ACCEPTED_SUFFIXES]
    if unknown:
        raise Glm4vEdgeError(f"unsupported file type: {', '.join(unknown)} (images, videos and PDFs are accepted)")
    # Counts before any decoding: the same rules the processor's inputs follow, plus our own image limit.
    kinds = ["video" if p.suffix.lower() in VIDEO_SUFFIXES else "image" for p in paths]
    check_media_counts([{"role": "user", "content": [{"type": kind} for kind in kinds]}])
    if kinds.count("image") > settings.max_images:
        raise Glm4vEdgeError(f"{kinds.count('image')} images in one message; the limit is {settings.max_images}")
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            checked(path, load_image)  # decode now: a corrupt image is refused before the model runs
            turn.images.append(path)
        elif suffix in PDF_SUFFIXES:
            turn.images += pdf_pages(path, settings.max_images - len(turn.images))
        else:
            checked(path, probe_video)
            turn.video = path
    if len(turn.images) > settings.max_images:
        raise Glm4vEdgeError(f"{len(turn.images)} images (PDF pages included); the limit is {settings.max_images}")
    return turn
