"""Reading reference images: every bad file refused in one line, every odd mode turned into RGB."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from arpo.core.errors import InvalidInputError
from arpo.tools.reference_image import load_reference_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def refusal(path, **options) -> str:
    with pytest.raises(InvalidInputError) as raised:
        load_reference_image(path, **options)
    message = str(raised.value)
    assert "\n" not in message
    assert Path(path).name in message
    return message


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with one empty data chunk: cheap to write, any size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def noise_png_bytes(size=(64, 64)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def half_red_half_blue(mode_size=(40, 20)) -> Image.Image:
    image = Image.new("RGB", mode_size, BLUE)
    image.paste(RED, (0, 0, mode_size[0] // 2, mode_size[1]))
    return image


# Refusals


def test_missing_file(tmp_path):
    assert "no such file" in refusal(tmp_path / "absent.png")


def test_directory(tmp_path):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    assert "is a folder" in refusal(folder)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "file is empty" in refusal(empty)


def test_not_an_image(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("a cat on a sofa, oil painting")
    assert "not an image file" in refusal(text)


def test_truncated_image(tmp_path):
    whole = noise_png_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert "truncated or corrupt" in refusal(truncated)


def test_decompression_bomb_beyond_pillow_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30_000, 30_000))
    assert "too large" in refusal(bomb)


def test_pillow_bomb_warning_is_treated_as_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    suspicious = tmp_path / "suspicious.png"
    Image.new("RGB", (40, 40)).save(suspicious)  # 1,600 pixels: above the limit, below twice it
    assert "decompression bomb" in refusal(suspicious, max_pixels=10_000)


def test_image_over_our_pixel_limit_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(5_000, 4_000))  # no pixel data: decoding would fail differently
    message = refusal(big, max_pixels=1_000_000)
    assert "too large (5000x4000 = 20,000,000 pixels; the limit is 1,000,000)" in message


def test_zero_size_header_is_refused(tmp_path):
    flat = tmp_path / "flat.png"
    flat.write_bytes(png_header_only(0, 10))
    refusal(flat)


def test_zero_size_image_that_opens_is_refused(tmp_path, monkeypatch):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (4, 4)).save(flat)
    monkeypatch.setattr(Image, "open", lambda _path: Image.new("RGB", (0, 4)))
    assert "has no pixels (0x4)" in refusal(flat)


# Conversions


def test_plain_rgb_keeps_pixels_and_describes_the_file(tmp_path):
    path = tmp_path / "plain.png"
    half_red_half_blue().save(path)
    loaded = load_reference_image(str(path))
    assert loaded.image.mode == "RGB"
    assert (loaded.name, loaded.source_path) == ("plain.png", path)
    assert (loaded.original_mode, loaded.original_size) == ("RGB", (40, 20))
    assert loaded.image.getpixel((0, 0)) == RED and loaded.image.getpixel((39, 0)) == BLUE


def test_image_stays_usable_after_the_file_is_gone(tmp_path):
    path = tmp_path / "gone.png"
    half_red_half_blue().save(path)
    loaded = load_reference_image(path)
    path.unlink()
    assert loaded.image.getpixel((39, 19)) == BLUE


def test_cmyk(tmp_path):
    path = tmp_path / "print.tif"
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (0, 0, 4, 8))
    cmyk.save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode == "CMYK"
    assert loaded.image.getpixel((0, 0)) == RED
    assert loaded.image.getpixel((7, 0)) == WHITE


def test_palette_with_transparency_is_laid_on_white(tmp_path):
    path = tmp_path / "sticker.png"
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0] + list(BLUE) + [0, 0, 0] * 254)
    palette.paste(0, (0, 0, 4, 8))
    palette.save(path, transparency=0)
    loaded = load_reference_image(path)
    assert loaded.original_mode == "P"
    assert loaded.image.getpixel((0, 0)) == WHITE  # transparent black becomes white, not black
    assert loaded.image.getpixel((7, 0)) == BLUE


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "indexed.gif"
    half_red_half_blue().convert("P").save(path)
    loaded = load_reference_image(path)
    assert loaded.image.getpixel((0, 0)) == RED and loaded.image.getpixel((39, 0)) == BLUE


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("RGBA", (0, 0, 0, 0), WHITE),
        ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("LA", (0, 0), WHITE),
        ("LA", (100, 255), (100, 100, 100)),
    ],
)
def test_alpha_is_laid_on_white(tmp_path, mode, pixel, expected):
    path = tmp_path / f"alpha-{mode}.png"
    Image.new(mode, (4, 4), pixel).save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode == mode
    assert loaded.image.getpixel((0, 0)) == expected


def test_greyscale_with_transparent_colour(tmp_path):
    path = tmp_path / "keyed.png"
    grey = Image.new("L", (4, 4), 0)
    grey.paste(90, (2, 0, 4, 4))
    grey.save(path, transparency=0)
    loaded = load_reference_image(path)
    assert loaded.image.getpixel((0, 0)) == WHITE
    assert loaded.image.getpixel((3, 0)) == (90, 90, 90)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "scan16.png"
    levels = np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(levels).save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode.startswith("I")
    row = [loaded.image.getpixel((x, 0)) for x in range(4)]
    assert row == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (4, 4, 4)]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 100, 255], [0, 100, 255]),  # already 8-bit: kept
        ([0, 257 * 64, 65535], [0, 64, 255]),  # 16-bit range: scaled
        ([-1000, 0, 1000], [0, 128, 255]),  # anything else: stretched over its own range
    ],
)
def test_thirty_two_bit_integer_greyscale(tmp_path, values, expected):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.array([values], dtype=np.int32)).save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode == "I"
    assert [loaded.image.getpixel((x, 0))[0] for x in range(3)] == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # unit range
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 8-bit range
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # stretched
        ([0.0, float("nan"), 1.0], [0, 0, 255]),  # not-a-number counts as the darkest value
    ],
)
def test_float_greyscale(tmp_path, values, expected):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode == "F"
    assert [loaded.image.getpixel((x, 0))[0] for x in range(3)] == expected


def test_one_bit(tmp_path):
    path = tmp_path / "fax.png"
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (4, 0, 8, 8))
    bilevel.save(path)
    loaded = load_reference_image(path)
    assert loaded.original_mode == "1"
    assert loaded.image.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.image.getpixel((7, 0)) == WHITE


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.png"
    stored = half_red_half_blue((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored pixels rotated 90 degrees clockwise
    stored.save(path, exif=exif)
    loaded = load_reference_image(path)
    assert loaded.original_size == (40, 20)
    assert loaded.image.size == (20, 40)
    # The red left half of the stored pixels ends up on top.
    assert loaded.image.getpixel((10, 0)) == RED
    assert loaded.image.getpixel((10, 39)) == BLUE


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0), BLUE)]


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "loop.gif"
    first, *rest = frames()
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    loaded = load_reference_image(path)
    assert loaded.image.getpixel((0, 0)) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_its_first_frame(tmp_path):
    path = tmp_path / "loop.webp"
    first, *rest = frames()
    first.save(path, save_all=True, append_images=rest, duration=100, lossless=True)
    assert Image.open(path).n_frames == 3
    loaded = load_reference_image(path)
    assert loaded.image.getpixel((0, 0)) == RED
