"""The loop's own work per iteration, counted: the reference goes to the brain encoded once per run, an
image stored in one node is read in the next without decoding its file, and the checkpoint and history
databases commit without waiting for the disk (a killed process keeps every commit; see test_cli_resume)."""

from __future__ import annotations

import base64
import io
import sqlite3

import pytest
from PIL import Image

from arpo.agents import image_parts
from arpo.agents.image_parts import image_part
from arpo.graphs.checkpoints import sqlite_saver
from arpo.storage.history import History
from arpo.storage.image_store import ImageStore


@pytest.fixture
def counted_encodings(monkeypatch):
    """Images actually encoded by image_part (not answered from its memory)."""
    encoded: list[tuple[int, int]] = []
    original = image_parts._encoded_part

    def counting(image, max_side, encoding):
        encoded.append(image.size)
        return original(image, max_side, encoding)

    monkeypatch.setattr(image_parts, "_encoded_part", counting)
    monkeypatch.setattr(image_parts, "_remembered", type(image_parts._remembered)())
    return encoded


def _pixels(part: dict) -> bytes:
    payload = part["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB").tobytes()


def test_an_image_sent_again_is_not_encoded_again(counted_encodings):
    reference = Image.effect_noise((120, 90), 40).convert("RGB")
    first = image_part(reference)
    again = image_part(reference.copy())  # another object with the same pixels, as each node reopens it
    assert counted_encodings == [(120, 90)]
    assert again == first and again is not first  # equal content, a fresh dict per message
    other = reference.copy()
    other.putpixel((0, 0), (255, 0, 0))
    assert _pixels(image_part(other)) == other.tobytes()  # one changed pixel is another image
    image_part(reference, encoding="JPEG")  # another encoding is another part
    assert len(counted_encodings) == 3


def test_remembered_parts_are_bounded(counted_encodings):
    images = [Image.new("RGB", (8, 8), (index, 0, 0)) for index in range(image_parts.REMEMBERED_PARTS + 1)]
    for image in images:
        image_part(image)
    image_part(images[0])  # pushed out by the newer ones: encoded again
    assert len(counted_encodings) == len(images) + 1
    assert len(image_parts._remembered) == image_parts.REMEMBERED_PARTS


def test_an_image_just_stored_is_read_without_decoding_its_file(tmp_path, monkeypatch):
    store = ImageStore(tmp_path / "images")
    generated = Image.effect_noise((64, 64), 30).convert("RGB")
    stored = store.put(generated)
    decoded: list[str] = []
    original_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: decoded.append("file") or original_open(*args, **kwargs))

    opened = store.open(stored.sha256)
    assert decoded == [] and opened.tobytes() == generated.tobytes()
    opened.putpixel((0, 0), (0, 0, 0))  # the caller's copy: the store's image is unchanged
    assert store.open(stored.sha256).tobytes() == generated.tobytes()

    stored.path.unlink()  # a file removed behind the store's back is still reported missing
    with pytest.raises(Exception, match="missing from the image store"):
        store.open(stored.sha256)
    assert ImageStore(tmp_path / "images").put(generated).sha256 == stored.sha256  # the same name as before


def test_databases_commit_to_the_write_ahead_log_without_waiting_for_the_disk(arpo_home):
    history = History.open()
    with history._engine.connect() as connection:
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    assert (journal, synchronous) == ("wal", 1)  # 1: NORMAL
    saver = sqlite_saver(history.checkpoint_path)
    try:
        assert saver.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert saver.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        saver.conn.close()
    assert isinstance(saver.conn, sqlite3.Connection)


def test_token_counts_of_a_prompt_are_computed_once(monkeypatch):
    from arpo.tools import clip_scorer
    from arpo.tools.clip_scorer import ClipScorer
    from arpo.tools.text_to_image import TextToImage

    scorer, t2i = ClipScorer.tiny(), TextToImage.tiny()
    counted: list[str] = []
    original_count = clip_scorer._content_token_count
    monkeypatch.setattr(clip_scorer, "_content_token_count",
                        lambda tokenizer, text: counted.append(text) or original_count(tokenizer, text))

    class CountingTokenizer:
        def __init__(self, wrapped):
            self.wrapped = wrapped

        def __getattr__(self, name):
            return getattr(self.wrapped, name)

        def __call__(self, text, **kwargs):
            counted.append(text)
            return self.wrapped(text, **kwargs)

    t2i._tokenizer = CountingTokenizer(t2i._tokenizer)
    prompt = "a red fox in the snow, " * 20  # longer than the window: truncation asks for spans again
    for _ in range(3):
        assert scorer.count_tokens(prompt) > scorer.token_budget()
        assert t2i.count_tokens(prompt) > t2i.token_budget()
        shortened = t2i.truncate(prompt)
    assert t2i.count_tokens(shortened) <= t2i.token_budget() and prompt.startswith(shortened)
    assert counted.count(prompt) == 2  # once per model, not once per question


def test_loaded_models_are_kept_out_of_full_collections_without_leaking_dropped_cycles():
    import gc
    import weakref

    from arpo.tools.model_stack import build_model_stack

    stack = build_model_stack("tiny")
    assert gc.get_freeze_count() > len(gc.get_objects())  # most long-lived objects are no longer walked

    class Holder:
        pass

    cycle = Holder()
    cycle.self_reference, cycle.models = cycle, stack  # garbage only a cyclic collection can free
    stack.text_to_image.holder = cycle
    alive = weakref.ref(cycle)
    del cycle, stack
    gc.freeze()  # as if the cycle had been frozen with the stack that held it
    gc.collect()
    assert alive() is not None  # frozen: not collected yet
    build_model_stack("tiny")  # the next stack thaws the old objects before freezing its own
    assert alive() is None
