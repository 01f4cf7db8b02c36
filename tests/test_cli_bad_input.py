"""Bad reference images are refused by the CLI in one line with exit 2; odd but valid ones are accepted."""

import sqlite3
import struct
import zlib

import numpy as np
import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo
from PIL import Image

TINY_OFFLINE = ("--models", "tiny", "--brain", "offline", "--steps", "0")


def png_claiming_size(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_bad(kind, folder):
    path = folder / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-an-image":
        path.write_text("a cat sitting on a sofa")
    elif kind == "truncated":
        data = SAMPLE_IMAGE.read_bytes()
        path = folder / "truncated.jpg"
        path.write_bytes(data[: len(data) // 3])
    elif kind == "bomb":
        path.write_bytes(png_claiming_size(40_000, 40_000))
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("not-an-image", "not an image"),
        ("truncated", "truncated or corrupt"),
        ("bomb", "decompression bomb"),
        ("folder", "folder"),
    ],
)
def test_bad_reference_is_refused_in_one_line(capsys, arpo_home, tmp_path, kind, problem):
    # A finished run already in the history must survive the refusal untouched.
    assert run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY_OFFLINE).exit_code == 0
    path = make_bad(kind, tmp_path)
    outcome = run_arpo(capsys, "invert", path, *TINY_OFFLINE)
    assert outcome.exit_code == 2
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert path.name in lines[0] and problem in lines[0]
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        assert db.execute("SELECT count(*), min(status) FROM runs").fetchone() == (1, "finished")


def odd_images(folder):
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.convert("P").save(folder / "palette.png")
    base.convert("RGBA").save(folder / "alpha.png")
    Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)).save(folder / "sixteen.png")
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    rotated = base.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif)
    return sorted(folder.iterdir())


def test_odd_modes_are_accepted(capsys, tmp_path):
    for path in odd_images(tmp_path):
        outcome = run_arpo(capsys, "invert", path, *TINY_OFFLINE, "--init-prompt", "a test", "--json")
        assert outcome.exit_code == 0, f"{path.name}: {outcome.stderr}"
        assert outcome.json()["reference"] == path.name
