"""What a batch holds: the images of a folder, or the rows of a JSONL or CSV manifest.

A manifest row names an image (`image`, a path relative to the manifest's folder unless absolute) and,
optionally, the prompt known to have made it (`ground_truth`), which is carried into the exports for
comparison. Rows that cannot be read as such are refused with the file and line named; an image that
is missing or unreadable is not a manifest error, it becomes a failed item when the batch runs, so one
bad file never stops the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from arpo.core.errors import InvalidInputError
from arpo.tools.reference_image import IMAGE_SUFFIXES

MANIFEST_FIELDS = ("image", "ground_truth")


@dataclass(frozen=True)
class BatchItem:
    """One image to recover a prompt for."""

    image_path: Path
    """Where the image file is (resolved against the manifest's folder)."""
    label: str
    """How the image is named in reports: the path as written in the manifest, or the file name."""
    ground_truth: str | None = None
    """The prompt known to have made the image, when the manifest gives one."""


def read_batch_items(source: str | Path) -> list[BatchItem]:
    """The items of a folder (its image files, in name order) or of a `.jsonl` / `.csv` manifest."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_items(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such folder or manifest file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        items = _jsonl_items(path)
    elif suffix == ".csv":
        items = _csv_items(path)
    else:
        raise InvalidInputError(f"{path}: a batch is a folder of images or a .jsonl / .csv manifest")
    if not items:
        raise InvalidInputError(f"{path}: the manifest lists no images")
    return items


def _folder_items(folder: Path) -> list[BatchItem]:
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InvalidInputError(f"{folder}: the folder holds no image files ({suffixes})")
    return [BatchItem(image_path=file, label=file.name) for file in files]


def _jsonl_items(manifest: Path) -> list[BatchItem]:
    items = []
    for number, line in enumerate(_read_text(manifest).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{manifest}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise InvalidInputError(f"{manifest}:{number}: each line must be a JSON object with an \"image\" key")
        items.append(_item_from_row(manifest, number, row))
    return items


def _csv_items(manifest: Path) -> list[BatchItem]:
    reader = csv.DictReader(_read_text(manifest).splitlines(), strict=True)
    items = []
    try:
        if "image" not in (reader.fieldnames or []):
            raise InvalidInputError(f"{manifest}:1: the header must name an \"image\" column")
        for row in reader:
            # DictReader files cells beyond the header under the key None.
            if None in row:
                raise InvalidInputError(f"{manifest}:{reader.line_num}: more cells than the header has columns")
            cells = {name: value for name, value in row.items() if value not in (None, "")}
            items.append(_item_from_row(manifest, reader.line_num, cells))
    except csv.Error as error:
        raise InvalidInputError(f"{manifest}:{reader.line_num}: not readable as CSV ({error})") from None
    return items


def _item_from_row(manifest: Path, number: int, row: dict) -> BatchItem:
    where = f"{manifest}:{number}"
    unknown = sorted(set(row) - set(MANIFEST_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown field {unknown[0]!r}; a row may have {', '.join(MANIFEST_FIELDS)}"
        )
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidInputError(f"{where}: \"image\" must be a non-empty path")
    ground_truth = row.get("ground_truth")
    if ground_truth is not None and not isinstance(ground_truth, str):
        raise InvalidInputError(f"{where}: \"ground_truth\" must be text")
    image_path = Path(image.strip()).expanduser()
    if not image_path.is_absolute():
        image_path = manifest.parent / image_path
    return BatchItem(image_path=image_path, label=image.strip(), ground_truth=ground_truth or None)


def _read_text(manifest: Path) -> str:
    try:
        return manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{manifest}: a manifest must be UTF-8 text") from None
    except OSError as error:
        raise InvalidInputError(f"{manifest}: cannot read ({error.strerror or error})") from None
