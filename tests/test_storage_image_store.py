"""Content-addressed PNG files."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from arpo.core.errors import InvalidInputError
from arpo.storage.image_store import ImageStore


def noise_image(seed: int, size=(24, 16)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def stored_files(store: ImageStore) -> list:
    return sorted(path for path in store.root.rglob("*") if path.is_file())


def test_file_is_named_by_the_hash_of_its_size_and_pixels(tmp_path):
    store = ImageStore(tmp_path / "images")
    image = noise_image(1)
    stored = store.put(image)
    assert stored.path == tmp_path / "images" / stored.sha256[:2] / f"{stored.sha256}.png"
    expected = hashlib.sha256(b"rgb 24x16\n" + image.convert("RGB").tobytes()).hexdigest()
    assert stored.sha256 == expected
    with Image.open(stored.path) as written:  # the file holds exactly those pixels
        assert written.convert("RGB").tobytes() == image.convert("RGB").tobytes()
    assert (stored.width, stored.height) == (24, 16)
    # The same bytes in another shape are another image.
    assert store.put(Image.frombytes("RGB", (16, 24), image.convert("RGB").tobytes())).sha256 != stored.sha256


def test_a_file_named_the_old_way_still_opens_by_its_name(tmp_path):
    """Stores written before pixel naming name files by the hash of their PNG bytes."""
    from arpo.storage.image_store import encode_png

    store = ImageStore(tmp_path / "images")
    png = encode_png(noise_image(2))
    old_name = hashlib.sha256(png).hexdigest()
    store.path_for(old_name).parent.mkdir(parents=True)
    store.path_for(old_name).write_bytes(png)
    assert store.open(old_name).tobytes() == noise_image(2).convert("RGB").tobytes()


def test_same_pixels_twice_make_one_file(tmp_path):
    store = ImageStore(tmp_path / "images")
    first = store.put(noise_image(1))
    second = store.put(noise_image(1))
    assert first == second
    assert stored_files(store) == [first.path]


def test_different_pixels_make_different_files(tmp_path):
    store = ImageStore(tmp_path / "images")
    assert store.put(noise_image(1)).sha256 != store.put(noise_image(2)).sha256
    assert len(stored_files(store)) == 2


def test_metadata_of_the_source_does_not_change_the_hash(tmp_path):
    store = ImageStore(tmp_path / "images")
    decorated = noise_image(3)
    decorated.info["icc_profile"] = b"not really a profile"
    decorated.info["dpi"] = (300, 300)
    assert store.put(decorated).sha256 == store.put(noise_image(3)).sha256


def test_open_returns_the_same_pixels_as_rgb(tmp_path):
    store = ImageStore(tmp_path / "images")
    original = noise_image(4)
    reopened = store.open(store.put(original).sha256)
    assert reopened.mode == "RGB"
    assert np.array_equal(np.asarray(reopened), np.asarray(original))


def test_non_rgb_images_are_stored_as_rgb(tmp_path):
    store = ImageStore(tmp_path / "images")
    grey = Image.new("L", (4, 4), 200)
    stored = store.put(grey)
    assert stored.sha256 == store.put(Image.new("RGB", (4, 4), (200, 200, 200))).sha256
    assert store.open(stored.sha256).getpixel((0, 0)) == (200, 200, 200)


def test_no_temporary_files_are_left_behind(tmp_path):
    store = ImageStore(tmp_path / "images")
    store.put(noise_image(5))
    assert [path.name for path in stored_files(store) if path.name.startswith(".incoming")] == []


def test_missing_image_is_a_clear_error(tmp_path):
    store = ImageStore(tmp_path / "images")
    with pytest.raises(InvalidInputError, match="missing from the image store"):
        store.open("ab" * 32)


@pytest.mark.parametrize("bad_hash", ["abc", "../../etc/passwd", "AB" * 32, "g" * 64])
def test_malformed_hash_is_refused(tmp_path, bad_hash):
    with pytest.raises(InvalidInputError, match="is not an image hash"):
        ImageStore(tmp_path).path_for(bad_hash)
