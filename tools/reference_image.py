"""Reading the image a person wants a prompt for, whatever file they hand us, as plain 8-bit RGB.

Every refusal is an InvalidInputError whose one line names the file and the problem. Odd but valid
images are converted rather than refused:

- transparency (RGBA, LA, PA, palette or greyscale with a transparent colour) is laid over white;
- 16-bit greyscale is scaled from 0..65535 down to 0..255;
- 32-bit integer greyscale ("I") is kept as is when it fits 0..255, scaled like 16-bit when it
  fits 0..65535, and otherwise stretched from its own darkest to its brightest value;
- floating-point greyscale ("F") is read as 0..1 when it fits there, as 0..255 when it fits
  there, and otherwise stretched from its own darkest to its brightest value;
- CMYK, YCbCr and 1-bit images use Pillow's conversion;
- a camera's EXIF orientation is applied (an unreadable orientation tag is ignored);
- an animation gives its first frame.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arpo.core.errors import InvalidInputError

DEFAULT_MAX_PIXELS = 50_000_000
# File extensions taken as images when a whole folder is read (batches, evaluation sets, target domains).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
BACKGROUND_FOR_TRANSPARENCY = (255, 255, 255)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass
class ReferenceImage:
    """A reference image ready for the loop, plus what it looked like on disk."""

    image: Image.Image
    """The pixels as 8-bit RGB, upright, first frame only."""
    name: str
    """The file name the person gave (no folders), used to label the run."""
    source_path: Path
    """Where the file was read from."""
    original_mode: str
    """Pillow's mode of the file before conversion, e.g. "CMYK" or "I;16"."""
    original_size: tuple[int, int]
    """Width and height as stored in the file, before any EXIF rotation."""


def load_reference_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ReferenceImage:
    """Read an image file fully and return it as RGB, or raise InvalidInputError saying why not."""
    source_path = Path(path).expanduser()
    _check_is_readable_file(source_path)
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice its limit; a reference that large is refused.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source_path) as opened:
                original_mode, original_size = opened.mode, opened.size
                _check_size(source_path, original_size, max_pixels)
                first_frame = _load_first_frame(source_path, opened)
                rgb = _to_rgb_or_refuse(source_path, _upright(first_frame))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInputError(
                f"{source_path}: image is too large to open safely (possible decompression bomb)"
            ) from None
        except UnidentifiedImageError:
            raise InvalidInputError(
                f"{source_path}: not an image file, or an image format or header Pillow cannot read"
            ) from None
        except PermissionError:
            raise InvalidInputError(f"{source_path}: permission denied") from None
        except OSError as exc:
            raise InvalidInputError(f"{source_path}: cannot read image ({_one_line(exc)})") from None
    return ReferenceImage(
        image=rgb,
        name=source_path.name,
        source_path=source_path,
        original_mode=original_mode,
        original_size=original_size,
    )


def _check_is_readable_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: file is empty")


def _check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"{path}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{path}: image is too large ({width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,})"
        )


def _load_first_frame(path: Path, opened: Image.Image) -> Image.Image:
    """Decode the whole first frame now, so a truncated or corrupt file fails here, not later."""
    try:
        opened.seek(0)
        opened.load()
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        raise InvalidInputError(f"{path}: image data is truncated or corrupt ({_one_line(exc)})") from None
    return opened


def _one_line(error: BaseException) -> str:
    """A library's error text squeezed onto one line, for our one-line messages."""
    return " ".join(str(error).split())


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; a copy, detached from the open file."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        # A broken EXIF block should not cost the person their image; use it as stored.
        return image.copy()


def _to_rgb_or_refuse(path: Path, image: Image.Image) -> Image.Image:
    try:
        return to_rgb(image)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, keeping the look of the image (see the module doc).

    Raises ValueError for a mode Pillow cannot turn into RGB.
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"I", "F"}:
        # Checked before transparency: Pillow's own conversion of these modes clips at 255.
        return Image.fromarray(_greyscale_to_8_bit(image)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_on_white(image.convert("RGBA"))
    if image.mode == "RGB":
        return image.copy()
    try:
        return image.convert("RGB")
    except ValueError:
        raise ValueError(f"images in colour mode {image.mode} are not supported") from None


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, BACKGROUND_FOR_TRANSPARENCY + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _greyscale_to_8_bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    else:
        scaled = _fit_to_8_bit_range(values, is_float=image.mode == "F")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _fit_to_8_bit_range(values: np.ndarray, *, is_float: bool) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if is_float and low >= 0.0 and high <= 1.0:
        return values * 255.0
    if low >= 0.0 and high <= 255.0:
        return values
    if not is_float and low >= 0.0 and high <= 65535.0:
        return values / 257.0
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))
