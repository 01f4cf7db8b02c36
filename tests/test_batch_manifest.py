"""Reading what a batch holds: image folders and JSONL/CSV manifests, and one-line errors for bad rows."""

import pytest
from cli_harness import run_arpo

from arpo.core.errors import InvalidInputError
from arpo.graphs.batch_manifest import read_batch_items


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_folder_lists_its_image_files_in_name_order(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png", "results.csv"):
        touch(tmp_path / name)
    (tmp_path / "sub").mkdir()
    touch(tmp_path / "sub" / "deeper.png")
    items = read_batch_items(tmp_path)
    assert [item.label for item in items] == ["a.jpg", "b.PNG", "c.webp"]
    assert [item.image_path for item in items] == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "c.webp"]
    assert all(item.ground_truth is None for item in items)


def test_jsonl_paths_are_relative_to_the_manifest(tmp_path):
    manifest = tmp_path / "set" / "manifest.jsonl"
    touch(manifest, b"")
    manifest.write_text(
        '{"image": "imgs/one.png", "ground_truth": "a red barn"}\n'
        "\n"
        f'{{"image": "{tmp_path / "elsewhere.png"}"}}\n'
    )
    items = read_batch_items(manifest)
    assert [(item.label, item.ground_truth) for item in items] == [
        ("imgs/one.png", "a red barn"),
        (str(tmp_path / "elsewhere.png"), None),
    ]
    assert items[0].image_path == tmp_path / "set" / "imgs" / "one.png"
    assert items[1].image_path == tmp_path / "elsewhere.png"


def test_csv_manifest_with_optional_ground_truth(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text('image,ground_truth\none.png,"a barn, at dusk"\ntwo.png,\n')
    items = read_batch_items(manifest)
    assert [(item.label, item.ground_truth) for item in items] == [("one.png", "a barn, at dusk"), ("two.png", None)]
    assert items[1].image_path == tmp_path / "two.png"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.jsonl", '{"image": "a.png"}\n{"image": "b.png"\n', "m.jsonl:2: not valid JSON"),
        ("m.jsonl", '{"image": "a.png"}\n["b.png"]\n', "m.jsonl:2: each line must be a JSON object"),
        ("m.jsonl", '{"ground_truth": "x"}\n', 'm.jsonl:1: "image" must be a non-empty path'),
        ("m.jsonl", '{"image": 3}\n', 'm.jsonl:1: "image" must be a non-empty path'),
        ("m.jsonl", '{"image": "a.png", "caption": "x"}\n', "m.jsonl:1: unknown field 'caption'"),
        ("m.jsonl", '{"image": "a.png", "ground_truth": 5}\n', 'm.jsonl:1: "ground_truth" must be text'),
        ("m.jsonl", "\n\n", "m.jsonl: the manifest lists no images"),
        ("m.csv", "path,ground_truth\na.png,x\n", 'm.csv:1: the header must name an "image" column'),
        ("m.csv", "image\na.png\nb.png,extra\n", "m.csv:3: more cells than the header has columns"),
        ("m.csv", "image,ground_truth\n,lost\n", 'm.csv:2: "image" must be a non-empty path'),
        ("m.txt", "a.png\n", "m.txt: a batch is a folder of images or a .jsonl / .csv manifest"),
    ],
)
def test_bad_manifests_name_the_file_and_line(tmp_path, name, text, expected):
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(InvalidInputError) as raised:
        read_batch_items(manifest)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path}/{expected}")
    assert "\n" not in message


def test_missing_source_and_empty_folder_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="no such folder or manifest file"):
        read_batch_items(tmp_path / "nothing")
    touch(tmp_path / "readme.txt")
    with pytest.raises(InvalidInputError, match="the folder holds no image files"):
        read_batch_items(tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(b'{"image": "\xff\xfe"}\n')
    with pytest.raises(InvalidInputError, match="must be UTF-8 text"):
        read_batch_items(tmp_path / "bad.jsonl")


def test_cli_refuses_a_bad_manifest_in_one_line_before_loading_models(capsys, tmp_path, arpo_home):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{oops\n")
    outcome = run_arpo(capsys, "batch", manifest, "--models", "tiny", "--brain", "offline")
    assert outcome.exit_code == 2
    assert outcome.stderr.strip() == f"arpo: error: {manifest}:1: not valid JSON (Expecting property name enclosed in double quotes)"
    assert not (arpo_home / "arpo.db").exists()  # nothing opened, nothing stored

    bad_flag = run_arpo(capsys, "batch", manifest, "--concurrency", "0", "--brain", "offline")
    assert bad_flag.exit_code == 2
    assert bad_flag.stderr.strip() == "arpo: error: --concurrency must be at least 1, not 0"
