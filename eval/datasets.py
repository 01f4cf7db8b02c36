"""Evaluation data sets: reference images, each with the prompt that made it when that is known.

Two shapes are read:

- a folder of images, optionally with `prompts.jsonl` beside them (one `{"image": "cat.png",
  "prompt": "..."}` per line) giving ground-truth prompts;
- a JSONL manifest file, one `{"image": PATH, "prompt": TEXT?, "id": KEY?, "source": TEXT?,
  "generation_seed": INT?}` per line, image paths relative to the manifest's folder. The seed that
  generated a reference, when known, is checked against the evaluation's seeds (eval/seeds.py).

A "self-consistent" set (`make_self_consistent_set`) is generated from known prompts with the same
text-to-image model that will regenerate the recovered prompts. Its references are reachable by that
model by construction, and BERTScore against the true prompt measures how much of the prompt a
method recovered. Its references use seeds from `REFERENCE_SEED_BASE` (one million) up, far from the
search and evaluation seeds, so no evaluation render shares the noise its reference was made with.

The reference protocol is the ARPO thesis's benchmark (chapter 4): 100 images, 50 AI-generated (from
DiffusionDB, with their real prompts) and 50 made by people (WikiArt paintings and photographs), each
method scored at 3 seeds on Stable Diffusion 1.5, scored by CLIP-T, CLIP-I, DINO and ViT. Write such a
set as a manifest with `"source": "ai"` or `"source": "human"` per line; the report then shows the
table for all images and for each source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arpo.core.errors import InvalidInputError
from arpo.eval.seeds import REFERENCE_SEED_BASE
from arpo.tools.reference_image import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from arpo.tools.reference_image import ReferenceImage
    from arpo.tools.text_to_image import TextToImage

FOLDER_PROMPTS_FILE = "prompts.jsonl"
MANIFEST_FILE = "manifest.jsonl"


@dataclass(frozen=True)
class EvalCase:
    """One reference image of a data set."""

    key: str
    """Unique name of the image within the set (its id, or its path relative to the set)."""
    path: Path
    ground_truth: str | None = None
    source: str | None = None
    """Where the image came from ("ai", "human", ...), when the manifest says."""
    generation_seed: int | None = None
    """The seed the reference was generated with, when the manifest says (self-consistent sets do)."""

    def load(self) -> ReferenceImage:
        from arpo.tools.reference_image import load_reference_image

        return load_reference_image(self.path)


@dataclass(frozen=True)
class EvalDataset:
    """The reference images of one evaluation, in a fixed order."""

    location: Path
    cases: tuple[EvalCase, ...]


def load_dataset(location: str | Path) -> EvalDataset:
    """Read a folder of images or a JSONL manifest; InvalidInputError when neither is usable."""
    path = Path(location).expanduser()
    if path.is_dir():
        cases = _folder_cases(path)
    elif path.is_file():
        cases = _manifest_cases(path)
    else:
        raise InvalidInputError(f"{path}: no such manifest file or image folder")
    if not cases:
        raise InvalidInputError(f"{path}: no images to evaluate")
    keys = [case.key for case in cases]
    duplicate = next((key for key in keys if keys.count(key) > 1), None)
    if duplicate is not None:
        raise InvalidInputError(f"{path}: image {duplicate!r} is listed more than once")
    return EvalDataset(location=path.resolve(), cases=tuple(cases))


def _folder_cases(folder: Path) -> list[EvalCase]:
    prompts_file = folder / FOLDER_PROMPTS_FILE
    if prompts_file.is_file():
        return _manifest_cases(prompts_file)
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        return _manifest_cases(manifest)
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [EvalCase(key=image.name, path=image) for image in images]


def _manifest_cases(manifest: Path) -> list[EvalCase]:
    cases = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{manifest}: cannot read ({error})") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            cases.append(_manifest_case(manifest, number, line))
    return cases


def _manifest_case(manifest: Path, number: int, line: str) -> EvalCase:
    where = f"{manifest}:{number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{where}: not a JSON object ({error.msg})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"].strip():
        raise InvalidInputError(f'{where}: each line needs an "image" path')
    for field in ("prompt", "id", "source"):
        if entry.get(field) is not None and not isinstance(entry[field], str):
            raise InvalidInputError(f'{where}: "{field}" must be text')
    seed = entry.get("generation_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInputError(f'{where}: "generation_seed" must be a whole number')
    image = (manifest.parent / entry["image"]).expanduser()
    if not image.is_file():
        raise InvalidInputError(f"{where}: image {entry['image']} not found")
    prompt = (entry.get("prompt") or "").strip() or None
    return EvalCase(key=entry.get("id") or entry["image"], path=image, ground_truth=prompt, source=entry.get("source"),
                    generation_seed=seed)


def make_self_consistent_set(
    prompts: Iterable[str], text_to_image: TextToImage, folder: str | Path, *, seed: int = REFERENCE_SEED_BASE
) -> EvalDataset:
    """Generate one reference per prompt with `text_to_image` and write them with a manifest.

    Reference k is generated with seed `seed + k` (from one million by default, a range no search or
    evaluation seed uses). Files are `ref-000.png`, ... and `manifest.jsonl` (image, prompt, id, source
    "self", generation_seed) in `folder`. Methods never see the generation seed; the runner checks it.
    """
    texts = [" ".join(prompt.split()) for prompt in prompts]
    texts = [text for text in texts if text]
    if not texts:
        raise InvalidInputError("no prompts to generate a self-consistent set from")
    target = Path(folder).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, prompt in enumerate(texts):
        name = f"ref-{index:03d}.png"
        text_to_image.generate(prompt, seed + index).save(target / name)
        entry = {"id": name, "image": name, "prompt": prompt, "source": "self", "generation_seed": seed + index,
                 "model": text_to_image.name}
        lines.append(json.dumps(entry))
    (target / MANIFEST_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_dataset(target / MANIFEST_FILE)


def read_prompt_lines(path: str | Path) -> list[str]:
    """Prompts from a text file, one per non-blank line (a JSONL file's "prompt" fields also work)."""
    source = Path(path).expanduser()
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{source}: cannot read prompts ({error})") from None
    prompts = []
    for line in lines:
        text = line.strip()
        if text.startswith("{"):
            try:
                text = str(json.loads(text).get("prompt") or "").strip()
            except (json.JSONDecodeError, AttributeError):
                raise InvalidInputError(f"{source}: a line starting with {{ is not a JSON object") from None
        if text:
            prompts.append(text)
    return prompts
