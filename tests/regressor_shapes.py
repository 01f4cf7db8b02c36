"""A small image-prompt data set for the regressor tests: coloured shapes drawn on a light background,
each with a prompt that names its colour and shape."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square", "triangle")
SIDE = 32


def draw_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    size = rng.randint(14, 24)
    left, top = rng.randint(0, SIDE - size), rng.randint(0, SIDE - size)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse((left, top, left + size, top + size), fill=fill)
    elif shape == "square":
        pen.rectangle((left, top, left + size, top + size), fill=fill)
    else:
        pen.polygon([(left + size / 2, top), (left, top + size), (left + size, top + size)], fill=fill)
    return image


def prompt_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def write_shapes(folder: Path, per_combination: int = 4, seed: int = 0) -> Path:
    """Draw every colour x shape `per_combination` times into `folder`; return its JSONL manifest."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            for copy in range(per_combination):
                name = f"{colour}-{shape}-{copy}.png"
                draw_shape(colour, shape, rng).save(folder / name)
                lines.append(json.dumps({"image": name, "prompt": prompt_for(colour, shape)}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
