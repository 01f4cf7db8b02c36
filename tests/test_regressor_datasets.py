"""Training data: manifests, DiffusionDB's layout, and the paper's prompt filtering."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arpo.core.errors import InvalidInputError
from arpo.tools.regressor.vocabulary import Vocabulary
from arpo.training.regressor.datasets import filter_prompts, load_diffusiondb, load_manifest, load_training_pairs

LONG = "an intricate matte painting of a floating castle above the clouds, golden hour, "


def test_filtering_follows_the_papers_steps():
    prompts = [
        "  a cat in a hat  ",          # kept, stripped
        None,                          # missing
        float("nan"),                  # missing
        "NaN",                         # missing
        "   ",                         # no words
        "un chat très mignon",         # non-English character
        "猫",                          # non-English characters
        "a cat in a hat",              # exact repeat of a kept prompt
        LONG + "by artist one",        # kept
        LONG + "by artist two",        # same first 50 characters
        "prefix differs, " + LONG + "by artist one",  # same last 50 characters as a kept prompt
        "a dog\x00",                   # NUL character
        "a dog",                       # kept
    ]
    report = filter_prompts(prompts)
    assert report.prompts == ["a cat in a hat", LONG + "by artist one", "a dog"]
    assert report.kept == [0, 8, 12]
    assert report.removed == {"missing": 4, "no_words": 1, "non_english": 2, "near_duplicate": 3}


def _write_diffusiondb(root):
    rows = {
        "image_name": ["a.png", "b.png", "c.webp", "d.png", "e.png"],
        "prompt": ["a red fox in snow", "a red fox in snow", "ein Fuchs über Schnee", None, "a lighthouse"],
        "part_id": [1, 1, 2, 2, 2],
        "seed": [1, 2, 3, 4, 5],
    }
    pq.write_table(pa.table(rows), root / "metadata.parquet")
    (root / "part-000001").mkdir(parents=True)
    (root / "images" / "part-000002").mkdir(parents=True)
    for folder, name in [("part-000001", "a.png"), ("part-000001", "b.png"), ("images/part-000002", "c.webp"),
                         ("images/part-000002", "d.png")]:
        Image.new("RGB", (8, 8), "red").save(root / folder / name)
    # e.png (part 2) was never downloaded.


def test_diffusiondb_loader_reads_parquet_finds_images_and_filters(tmp_path):
    _write_diffusiondb(tmp_path)
    selection = load_diffusiondb(tmp_path)
    assert [(pair.image.relative_to(tmp_path).as_posix(), pair.prompt) for pair in selection.pairs] == [
        ("part-000001/a.png", "a red fox in snow"),
    ]
    assert selection.rows == 5 and selection.missing_images == 1
    assert selection.filtering.removed == {"near_duplicate": 1, "non_english": 1, "missing": 1}
    assert load_training_pairs(tmp_path / "metadata.parquet") == selection.pairs
    with pytest.raises(InvalidInputError, match="no DiffusionDB metadata"):
        load_diffusiondb(tmp_path / "part-000001")


def test_manifests_in_jsonl_and_csv_with_relative_paths(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    (tmp_path / "m.jsonl").write_text('{"image": "one.png", "prompt": " a dark square "}\n\n')
    (tmp_path / "m.csv").write_text('image,prompt\none.png,"a dark square, minimal"\n')
    assert [(p.image, p.prompt) for p in load_manifest(tmp_path / "m.jsonl")] == [(tmp_path / "one.png", "a dark square")]
    assert load_manifest(tmp_path / "m.csv")[0].prompt == "a dark square, minimal"

    (tmp_path / "bad.jsonl").write_text('{"image": "one.png", "prompt": "ok"}\n{"image": "gone.png", "prompt": "x"}\n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:2: image 'gone.png' does not exist"):
        load_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("path,text\none.png,x\n")
    with pytest.raises(InvalidInputError, match="'image' and 'prompt' columns"):
        load_manifest(tmp_path / "bad.csv")
    (tmp_path / "broken.jsonl").write_text("not json\n")
    with pytest.raises(InvalidInputError, match="broken.jsonl:1: not a JSON object"):
        load_manifest(tmp_path / "broken.jsonl")


def test_vocabulary_keeps_frequent_content_words_and_labels_presence():
    prompts = ["a red fox in the snow", "the red barn at dawn", "a fox and a barn", "red"]
    vocabulary = Vocabulary.build(prompts, size=3)
    assert vocabulary.words == ["red", "barn", "fox"]  # 3, 2, 2 prompts; "the", "a", "in" are stop words
    labels = vocabulary.labels(["A RED FOX", "a barn", "nothing here"])
    assert labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert Vocabulary.build(["the a of"], size=5).words == []
    assert Vocabulary.from_dict(vocabulary.to_dict()) == vocabulary
