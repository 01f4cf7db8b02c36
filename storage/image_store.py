"""Content-addressed image files: each image is a PNG named by the SHA-256 of its RGB pixels.

The name is the hash of the pixels (with the size), not of the PNG file: hashing 512x512 pixels takes
about a millisecond, encoding them as PNG 30-70 ms, and the loop needs the name at once while the file
can be written behind it (storage/write_behind.py). Stores written before this naming (late 2026)
name their files by the hash of the PNG bytes; those names stay valid, since a file is only ever
looked up by the name recorded for it, but the same pixels stored again get the new name and a second
file.
"""

import hashlib
import io
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from arpo.core.errors import InvalidInputError

PNG_COMPRESS_LEVEL = 3
"""zlib effort for stored PNGs, fixed so an image's file is the same from one store to the next. Level
3 writes a 512 px photo in about 26 ms where zlib's default of 6 takes 85 ms, for a file about 4 %
larger (measured on the sample image); the writer does this for every render, and at the end of a run
the run waits for it."""
RECENT_IMAGES = 4
"""Decoded images a store keeps: the loop stores an image in one node and reads it in the next."""
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredImageRef:
    """Where one stored image lives and how big it is."""

    sha256: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class PreparedImage:
    """An image named, its file not necessarily written yet."""

    ref: StoredImageRef
    pixels: Image.Image
    """The RGB image the name was computed from (a copy of the caller's)."""


class ImageStore:
    """PNG files under `root`, at `root/<first two hex digits>/<sha256>.png`.

    Writing the same pixels twice yields the same file; files are written to a temporary name and
    moved into place, so a reader never sees half an image.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._recent: OrderedDict[str, Image.Image] = OrderedDict()
        self._recent_lock = threading.Lock()

    def put(self, image: Image.Image) -> StoredImageRef:
        """Store an image (as RGB) and return its reference; storing it again changes nothing."""
        prepared = self.prepare(image)
        self.write(prepared)
        return prepared.ref

    def prepare(self, image: Image.Image) -> "PreparedImage":
        """Name an image and keep it in memory, so `open` serves it before its file is written
        (`write` encodes and writes it)."""
        rgb = (image if image.mode == "RGB" else image.convert("RGB")).copy()  # the caller may change theirs
        sha256 = pixel_name(rgb)
        self._remember(sha256, rgb)
        ref = StoredImageRef(sha256=sha256, path=self.path_for(sha256), width=image.width, height=image.height)
        return PreparedImage(ref=ref, pixels=rgb)

    def write(self, prepared: "PreparedImage") -> None:
        """Encode and write a prepared image's file, unless it is there already (PIL releases the
        interpreter lock while it compresses, so a writer thread does not hold up the loop)."""
        if not prepared.ref.path.exists():
            _write_atomically(prepared.ref.path, encode_png(prepared.pixels))

    def path_for(self, sha256: str) -> Path:
        """The file path an image with this hash has (whether or not it is stored yet)."""
        if not _SHA256_PATTERN.fullmatch(sha256):
            raise InvalidInputError(f"{sha256!r} is not an image hash (64 lowercase hex digits)")
        return self.root / sha256[:2] / f"{sha256}.png"

    def relative_path_for(self, sha256: str) -> str:
        """The file path of an image relative to the store root, with forward slashes."""
        return self.path_for(sha256).relative_to(self.root).as_posix()

    def contains(self, sha256: str) -> bool:
        """Whether the file for this hash is present."""
        return self.path_for(sha256).is_file()

    def open(self, sha256: str) -> Image.Image:
        """Load a stored image fully into memory, as RGB (a recently stored or opened one without
        decoding its file again; a copy, so the caller may change it)."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise InvalidInputError(f"image {sha256} is missing from the image store ({path})")
        recent = self.open_recent(sha256)
        if recent is not None:
            return recent
        with Image.open(path) as stored:
            image = stored.convert("RGB")
        self._remember(sha256, image.copy())
        return image

    def open_recent(self, sha256: str) -> Image.Image | None:
        """A copy of a recently stored, prepared or opened image, or None when it is not in memory."""
        with self._recent_lock:
            recent = self._recent.get(sha256)
            if recent is None:
                return None
            self._recent.move_to_end(sha256)
            return recent.copy()

    def _remember(self, sha256: str, image: Image.Image) -> None:
        # Kept as given: every reader gets a copy (`open_recent`), so nobody changes this one.
        with self._recent_lock:
            self._recent[sha256] = image
            self._recent.move_to_end(sha256)
            while len(self._recent) > RECENT_IMAGES:
                self._recent.popitem(last=False)


def pixel_name(image: Image.Image) -> str:
    """The store's name for an RGB image: the SHA-256 of its size and pixel bytes."""
    width, height = image.size
    digest = hashlib.sha256(f"rgb {width}x{height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of the image's RGB pixels alone: no ICC profile, EXIF or text chunks carried over."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # A fresh image has an empty `info`, so nothing but the pixels decides the bytes.
    bare = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    buffer = io.BytesIO()
    bare.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _write_atomically(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".png")
    try:
        # mkstemp makes owner-only files; stored images are meant to be readable like any other file.
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "wb") as temporary:
            temporary.write(content)
            temporary.flush()
            os.fsync(temporary.fileno())
        os.replace(temporary_name, target)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise
