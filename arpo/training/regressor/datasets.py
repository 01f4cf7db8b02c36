"""Training data for the regressor: (image file, prompt) pairs from a manifest or from DiffusionDB.

A manifest is JSONL (one {"image": ..., "prompt": ...} object per line) or CSV with `image` and
`prompt` columns; relative image paths are read from the manifest's folder.

DiffusionDB's layout is a metadata parquet (`image_name`, `prompt`, `part_id`, ...) beside the image
folders its zip parts unpack to (`part-000001/…png`, at the top or under `images/`). Only images present
on disk are used (a partial download is normal), and then the paper's prompt filtering applies, in its
order: surrounding whitespace removed; prompts with no word, missing (null/NaN) or holding NUL characters
dropped; prompts with any non-ASCII character dropped; near duplicates dropped, i.e. a prompt whose
first 50 or last 50 characters equal those of a prompt kept earlier (for prompts shorter than 50
characters this means exact repeats, so each prompt keeps one image).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from arpo.core.errors import InvalidInputError

NEAR_DUPLICATE_CHARACTERS = 50
METADATA_NAMES = ("metadata.parquet", "metadata-large.parquet")
_MISSING_WORDS = {"nan", "null"}


@dataclass(frozen=True)
class ImagePromptPair:
    image: Path
    prompt: str


@dataclass
class PromptFilterReport:
    """Which prompts survived the filtering, and how many each step removed."""

    kept: list[int]
    """Positions of the kept prompts in the input, in input order."""
    prompts: list[str]
    """The kept prompts, whitespace-stripped."""
    removed: Counter = field(default_factory=Counter)
    """Step name -> how many prompts it removed."""


def filter_prompts(prompts: Sequence[object]) -> PromptFilterReport:
    """The paper's filtering of DiffusionDB prompts (see the module docstring), first occurrence kept."""
    report = PromptFilterReport(kept=[], prompts=[])
    seen_starts: set[str] = set()
    seen_ends: set[str] = set()
    for position, raw in enumerate(prompts):
        reason = _rejection(raw)
        if reason is None:
            prompt = str(raw).strip()
            start, end = prompt[:NEAR_DUPLICATE_CHARACTERS], prompt[-NEAR_DUPLICATE_CHARACTERS:]
            if start in seen_starts or end in seen_ends:
                reason = "near_duplicate"
            else:
                seen_starts.add(start)
                seen_ends.add(end)
                report.kept.append(position)
                report.prompts.append(prompt)
                continue
        report.removed[reason] += 1
    return report


def _rejection(raw: object) -> str | None:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return "missing"
    prompt = str(raw).strip()
    if "\x00" in prompt or prompt.lower() in _MISSING_WORDS:
        return "missing"
    if not prompt.split():
        return "no_words"
    if not prompt.isascii():
        return "non_english"
    return None


@dataclass
class DiffusionDBSelection:
    pairs: list[ImagePromptPair]
    rows: int
    """Rows in the metadata."""
    missing_images: int
    """Rows whose image file is not on disk."""
    filtering: PromptFilterReport


def load_diffusiondb(root: str | Path, *, limit: int | None = None) -> DiffusionDBSelection:
    """The filtered (image, prompt) pairs of a DiffusionDB folder (or its metadata parquet file)."""
    import pyarrow.parquet as parquet

    metadata = _metadata_file(Path(root).expanduser())
    base = metadata.parent
    try:
        rows = parquet.read_table(metadata, columns=["image_name", "prompt", "part_id"]).to_pylist()
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise InvalidInputError(f"Cannot read DiffusionDB metadata '{metadata}': {reason}") from None
    present = [(row, path) for row in rows if (path := _image_path(base, row)) is not None]
    report = filter_prompts([row["prompt"] for row, _ in present])
    kept = zip(report.kept, report.prompts, strict=True)
    pairs = [ImagePromptPair(present[position][1], prompt) for position, prompt in kept]
    if limit is not None:
        pairs = pairs[:limit]
    return DiffusionDBSelection(pairs, len(rows), len(rows) - len(present), report)


def _metadata_file(root: Path) -> Path:
    if root.is_file():
        return root
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    raise InvalidInputError(f"'{root}' has no DiffusionDB metadata ({' or '.join(METADATA_NAMES)}).")


def _image_path(base: Path, row: dict) -> Path | None:
    name, part = row.get("image_name"), row.get("part_id")
    if not name or part is None:
        return None
    folder = f"part-{int(part):06d}"
    for candidate in (base / folder / name, base / "images" / folder / name):
        if candidate.is_file():
            return candidate
    return None


def load_manifest(path: str | Path) -> list[ImagePromptPair]:
    """The pairs of a JSONL or CSV manifest; InvalidInputError naming the first bad line or missing image."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"Manifest '{path}' does not exist.")
    records = _csv_records(path) if path.suffix.lower() == ".csv" else _jsonl_records(path)
    pairs = []
    for line, record in records:
        image, prompt = record.get("image"), record.get("prompt")
        if not isinstance(image, str) or not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError(f"{path}:{line}: needs a non-empty 'image' and 'prompt'.")
        image_path = Path(image).expanduser()
        image_path = image_path if image_path.is_absolute() else path.parent / image_path
        if not image_path.is_file():
            raise InvalidInputError(f"{path}:{line}: image '{image}' does not exist.")
        pairs.append(ImagePromptPair(image_path, prompt.strip()))
    if not pairs:
        raise InvalidInputError(f"Manifest '{path}' holds no (image, prompt) pairs.")
    return pairs


def _jsonl_records(path: Path) -> list[tuple[int, dict]]:
    records = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            raise InvalidInputError(f"{path}:{line}: not a JSON object.") from None
        if not isinstance(record, dict):
            raise InvalidInputError(f"{path}:{line}: not a JSON object.")
        records.append((line, record))
    return records


def _csv_records(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
            raise InvalidInputError(f"{path}: the CSV header must name 'image' and 'prompt' columns.")
        return [(reader.line_num, dict(row)) for row in reader]


def load_training_pairs(source: str | Path) -> list[ImagePromptPair]:
    """Pairs from a manifest file, or from DiffusionDB when `source` is its folder or parquet file."""
    source = Path(source).expanduser()
    if source.is_dir() or source.suffix == ".parquet":
        selection = load_diffusiondb(source)
        if not selection.pairs:
            raise InvalidInputError(f"No usable DiffusionDB pairs under '{source}' (no images, or all filtered).")
        return selection.pairs
    return load_manifest(source)


def open_image(path: Path) -> Image.Image:
    """A training image as RGB, with the same checks and conversions as a reference image."""
    from arpo.tools.reference_image import load_reference_image

    return load_reference_image(path).image
