"""Turn a PIL image into a chat-message image part the OpenAI API and vLLM both accept, and put
text and images together into one user message.

Images always travel inline as base64 data URLs: a brain server may have no route to wherever the
image lives, and vLLM refuses remote URLs unless told otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections import OrderedDict
from typing import Literal

from PIL import Image

DEFAULT_MAX_SIDE = 768
"""Vision models tile or resize images well below this anyway; larger only costs tokens and bytes."""

REMEMBERED_PARTS = 8
"""Encoded images kept by content: the reference goes out with every comparison of a run, and
encoding a photo as PNG costs tens of milliseconds each time; hashing its pixels costs well under one."""

PNG_COMPRESS_LEVEL = 1
"""zlib effort for a part's PNG. A part is read once and thrown away, so speed beats size: a 512 px
photo takes about 17 ms at level 1 against 85 ms at zlib's default of 6, for a part about 9 % larger
(measured on the sample image). The pixels are the same at every level."""

_BACKGROUND = (255, 255, 255)
_remembered: OrderedDict[tuple, dict] = OrderedDict()
_remembered_lock = threading.Lock()
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def user_message(*parts: str | dict) -> dict:
    """One user chat message from text pieces and image parts, in the order given.

    A message without images carries its text as one plain string (pieces joined by blank lines):
    some OpenAI-compatible servers drop a list of content parts (llama-cpp-python's built-in chat
    formats) or fail on it (chat templates that concatenate strings). Only a message with an image
    is sent as a list of parts.
    """
    if all(isinstance(part, str) for part in parts):
        return {"role": "user", "content": "\n\n".join(parts)}
    content = [{"type": "text", "text": part} if isinstance(part, str) else part for part in parts]
    return {"role": "user", "content": content}


def image_part(
    image: Image.Image,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    encoding: Literal["PNG", "JPEG"] = "PNG",
    content_name: str | None = None,
) -> dict:
    """An `image_url` content part holding `image` as an inline PNG (or JPEG) data URL.

    The image is flattened to RGB (transparency composited onto white) and shrunk so that its
    longer side is at most `max_side`; the caller's image is left untouched. The last few parts are
    remembered by pixel content, so an image sent again is not encoded again. `content_name`: a name
    the caller already has for exactly these pixels (the image store's hash), which saves hashing
    them (a photo's pixels take about half a millisecond, for every comparison of a run).
    """
    key = _content_key(image, max_side, encoding, content_name)
    with _remembered_lock:
        if key in _remembered:
            _remembered.move_to_end(key)
            return _copy_part(_remembered[key])
    part = _encoded_part(image, max_side, encoding)
    with _remembered_lock:
        _remembered[key] = part
        while len(_remembered) > REMEMBERED_PARTS:
            _remembered.popitem(last=False)
    return _copy_part(part)


def _content_key(image: Image.Image, max_side: int, encoding: str, content_name: str | None) -> tuple:
    shape = f"{image.mode}:{image.size}:{max_side}:{encoding};"
    if content_name is not None:
        return ("named", shape, content_name)
    digest = hashlib.sha256(shape.encode())
    digest.update(image.tobytes())
    return (digest.hexdigest(), _palette_and_transparency(image))


def _palette_and_transparency(image: Image.Image) -> tuple:
    """What besides the pixel bytes decides a palette image's colours."""
    if image.mode not in ("P", "PA"):
        return ()
    palette = image.getpalette() or []
    return (tuple(palette), repr(image.info.get("transparency")))


def _copy_part(part: dict) -> dict:
    """A fresh dict per message (callers may add keys), sharing the immutable URL string."""
    return {"type": part["type"], "image_url": dict(part["image_url"])}


def _encoded_part(image: Image.Image, max_side: int, encoding: str) -> dict:
    prepared = _as_rgb(image)
    if max(prepared.size) > max_side:
        prepared = prepared.copy()
        prepared.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if encoding == "JPEG":
        prepared.save(buffer, format="JPEG", quality=90)
        mime = "image/jpeg"
    else:
        prepared.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        mime = "image/png"
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}


def _as_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode; alpha (including palette transparency) goes onto a white background."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, _BACKGROUND)
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    if image.mode in _WIDE_GREY_MODES:
        # A plain convert would clip 16-bit values to white; scale them down to 8 bits instead.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    return image.convert("RGB")
