"""The history's repository API: runs, iterations, candidates, images and brain calls."""

import itertools
import secrets
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arpo.core.errors import InvalidInputError
from arpo.core.brain_calls import BrainCallRecord
from arpo.storage.history import History
from arpo.storage.models import BrainCall, Candidate, Iteration, StoredImage
from arpo.storage.records import CandidateRecord, IterationRecord
from arpo.storage.secrets_guard import names_a_credential


def brain_call(role: str, **fields) -> BrainCallRecord:
    """A brain call as the backends record one (a float start time is seconds since the epoch)."""
    values = {"model": "gpt-test", "provider": "openai", "started_at": 1_700_000_000.0, "latency_s": 0.5,
              "attempts": 1, "ok": True} | fields
    return BrainCallRecord(role=role, **values)


@pytest.fixture
def history(tmp_path):
    opened = History.open(f"sqlite:///{tmp_path}/history.db", tmp_path / "images")
    yield opened
    opened.close()


@pytest.fixture
def reference(history):
    return history.store_image(Image.new("RGB", (8, 8), (10, 20, 30)), "reference")


@pytest.fixture
def generated(history):
    return history.store_image(Image.new("RGB", (8, 8), (200, 0, 0)), "generated", {"seed": 7})


def count_rows(history: History, table) -> int:
    with Session(history._engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def iteration(index: int, generated_sha256: str, phrases: list[str], **fields) -> IterationRecord:
    return IterationRecord(
        index=index,
        prompt=fields.pop("prompt", f"a cat, step {index}"),
        seen_prompt=fields.pop("seen_prompt", f"a cat, step {index}"),
        token_count=6,
        token_budget=75,
        generated_sha256=generated_sha256,
        clip_t=0.25,
        clip_i=fields.pop("clip_i", 0.5),
        candidates=[
            CandidateRecord(phrase=phrase, score=0.1 * position, selected=position == 0,
                            reason="selected" if position == 0 else "no gain")
            for position, phrase in enumerate(phrases)
        ],
        **fields,
    )


def test_storing_an_image_twice_keeps_one_file_and_one_row(history, tmp_path):
    image = Image.new("RGB", (5, 3), (1, 2, 3))
    first = history.store_image(image, "reference", {"source": "upload"})
    second = history.store_image(image, "generated", {"seed": 1})
    assert first == second
    assert count_rows(history, StoredImage) == 1
    assert len([path for path in (tmp_path / "images").rglob("*.png")]) == 1
    with Session(history._engine) as session:
        row = session.get(StoredImage, first.sha256)
        assert (row.role, row.width, row.height, row.format) == ("reference", 5, 3, "PNG")
        assert row.image_metadata == {"source": "upload"}
        assert row.relative_path == f"{first.sha256[:2]}/{first.sha256}.png"


def test_unknown_image_role_is_refused(history):
    with pytest.raises(ValueError, match="unknown image role 'thumbnail'"):
        history.store_image(Image.new("RGB", (2, 2)), "thumbnail")


def test_new_run_is_running_with_its_config(history, reference):
    run_id = history.create_run(
        reference.sha256, "cat.jpg", {"steps": 5, "output": Path("/tmp/out"), "tokenizer": "clip"}
    )
    detail = history.get_run(run_id)
    assert len(run_id) == 12 and int(run_id, 16) >= 0
    assert (detail.status, detail.kind, detail.reference_name) == ("running", "invert", "cat.jpg")
    assert detail.reference_sha256 == reference.sha256
    assert detail.config == {"steps": 5, "output": "/tmp/out", "tokenizer": "clip"}
    assert detail.created_at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - detail.created_at).total_seconds()) < 60


def test_run_needs_a_stored_reference(history):
    with pytest.raises(ValueError, match="not stored"):
        history.create_run("ab" * 32, "cat.jpg", {})


@pytest.mark.parametrize(
    "config",
    [
        {"api_key": "sk-live"},
        {"brains": {"proposer": {"OPENAI_API_KEY": "sk-live"}}},
        {"brains": [{"model": "m"}, {"clientSecret": "hush"}]},
        {"hf_token": "hf_abc"},
        {"headers": {"accessToken": "abc"}},
    ],
)
def test_config_holding_credentials_is_refused(history, reference, config):
    with pytest.raises(ValueError, match="credentials"):
        history.create_run(reference.sha256, "cat.jpg", config)
    assert history.list_runs() == []


def test_credential_keys_without_a_value_are_allowed(history, reference):
    config = {"api_key": None, "secret": "", "token_budget": 77, "tokenizer": "openai/clip-vit"}
    run_id = history.create_run(reference.sha256, "cat.jpg", config)
    assert history.get_run(run_id).config == config


@pytest.mark.parametrize(
    ("key", "looks_secret"),
    [
        ("api_key", True),
        ("openaiApiKey", True),
        ("APIKEY", True),
        ("client_secret", True),
        ("db_password", True),
        ("token", True),
        ("hf_token", True),
        ("tokenizer", False),
        ("max_tokens", False),
        ("model", False),
    ],
)
def test_credential_key_names(key, looks_secret):
    assert names_a_credential(key) is looks_secret


def test_iterations_are_read_back_in_order_with_candidates(history, reference, generated):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    history.record_iteration(run_id, iteration(1, generated.sha256, ["warm light"], note="merged"))
    history.record_iteration(run_id, iteration(0, generated.sha256, ["tabby", "sofa", "oil"]))
    first, second = history.iterations(run_id)
    assert (first.index, second.index) == (0, 1)
    assert [c.phrase for c in first.candidates] == ["tabby", "sofa", "oil"]
    assert [c.reason for c in first.candidates] == ["selected", "no gain", "no gain"]
    assert first.candidates[2].score == pytest.approx(0.2)
    assert first.selected == ["tabby"]
    assert second.note == "merged"


def test_rewriting_an_iteration_replaces_it_and_its_candidates(history, reference, generated):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    history.record_iteration(run_id, iteration(0, generated.sha256, ["tabby", "sofa", "oil"]))
    history.record_iteration(
        run_id, iteration(0, generated.sha256, ["ginger", "rug"], prompt="a ginger cat", clip_i=0.7)
    )
    (only,) = history.iterations(run_id)
    assert only.prompt == "a ginger cat"
    assert only.clip_i == pytest.approx(0.7)
    assert [c.phrase for c in only.candidates] == ["ginger", "rug"]
    assert count_rows(history, Iteration) == 1
    assert count_rows(history, Candidate) == 2
    assert history.get_run(run_id).iterations == 1


def test_iteration_of_unknown_run_is_refused(history, generated):
    with pytest.raises(InvalidInputError, match="no run with id 000000000000"):
        history.record_iteration("000000000000", iteration(0, generated.sha256, []))


def test_iteration_needs_its_generated_image_stored(history, reference):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    with pytest.raises(ValueError, match="generated image .* is not stored"):
        history.record_iteration(run_id, iteration(0, "cd" * 32, []))
    assert history.iterations(run_id) == []


def test_brain_calls_are_stored_and_summed(history, reference):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    history.record_brain_calls(
        run_id,
        0,
        [
            brain_call("comparer", prompt_tokens=100, completion_tokens=40),
            brain_call("proposer", prompt_tokens=60, completion_tokens=None, attempts=3),
        ],
    )
    history.record_brain_calls(
        run_id,
        None,
        [brain_call("describer", started_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                       ok=False, error="timed out", prompt_tokens=None)],
    )
    detail = history.get_run(run_id)
    assert (detail.brain_calls, detail.prompt_tokens, detail.completion_tokens) == (3, 160, 40)
    with Session(history._engine) as session:
        rows = session.scalars(select(BrainCall).order_by(BrainCall.id)).all()
        assert [(row.role, row.iteration_index, row.attempts, row.ok) for row in rows] == [
            ("comparer", 0, 1, True),
            ("proposer", 0, 3, True),
            ("describer", None, 1, False),
        ]
        assert rows[0].started_at == datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)
        assert rows[2].started_at == datetime(2026, 1, 2, tzinfo=timezone.utc)
        assert rows[2].error == "timed out"


def test_brain_calls_for_unknown_run_are_refused(history):
    with pytest.raises(InvalidInputError, match="no run with id"):
        history.record_brain_calls("ffffffffffff", 0, [brain_call("proposer")])


def test_finishing_failing_and_resuming(history, reference):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    history.fail_run(run_id, "brain unreachable", status="interrupted")
    detail = history.get_run(run_id)
    assert (detail.status, detail.error) == ("interrupted", "brain unreachable")

    history.set_status(run_id, "running")
    history.finish_run(
        run_id, best_prompt="a tabby cat", best_clip_i=0.81, last_prompt="a tabby cat, oil",
        stopped_because="no candidate improved the score",
    )
    detail = history.get_run(run_id)
    assert detail.status == "finished"
    assert detail.error is None
    assert (detail.best_prompt, detail.last_prompt) == ("a tabby cat", "a tabby cat, oil")
    assert detail.best_clip_i == pytest.approx(0.81)
    assert detail.stopped_because == "no candidate improved the score"


def test_bad_statuses_are_refused(history, reference):
    run_id = history.create_run(reference.sha256, "cat.jpg", {})
    with pytest.raises(ValueError, match="unknown failure status"):
        history.fail_run(run_id, "boom", status="finished")
    with pytest.raises(ValueError, match="unknown run status"):
        history.set_status(run_id, "sleeping")
    assert history.get_run(run_id).status == "running"


def test_unknown_run_id_is_an_input_error(history, reference):
    history.create_run(reference.sha256, "cat.jpg", {})
    with pytest.raises(InvalidInputError, match="no run with id nope"):
        history.get_run("nope")
    with pytest.raises(InvalidInputError, match="no run with id 12%"):
        history.iterations("12%")


def test_run_found_by_unique_prefix(history, reference, monkeypatch):
    fixed_ids = iter(["abc123000000", "abc456000000"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(fixed_ids))
    first = history.create_run(reference.sha256, "one.jpg", {})
    second = history.create_run(reference.sha256, "two.jpg", {})
    assert history.get_run("abc1").id == first
    assert history.get_run("ABC4").reference_name == "two.jpg"
    assert [record.index for record in history.iterations("abc45")] == []
    assert history.get_run(second).id == second
    with pytest.raises(InvalidInputError, match="matches more than one run"):
        history.get_run("abc")


def test_list_runs_newest_first_with_iteration_counts(history, reference, generated):
    run_ids = [history.create_run(reference.sha256, f"{n}.jpg", {}) for n in range(3)]
    history.record_iteration(run_ids[1], iteration(0, generated.sha256, []))
    history.record_iteration(run_ids[1], iteration(1, generated.sha256, []))
    listed = history.list_runs()
    assert [summary.id for summary in listed] == run_ids[::-1]
    assert [summary.iterations for summary in listed] == [0, 2, 0]
    assert [summary.id for summary in history.list_runs(limit=2)] == run_ids[:0:-1]
    with pytest.raises(InvalidInputError):
        history.list_runs(limit=0)


def test_history_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path}/history.db"
    with History.open(url, tmp_path / "images") as first:
        stored = first.store_image(Image.new("RGB", (3, 3)), "reference")
        run_id = first.create_run(stored.sha256, "cat.jpg", {"steps": 2})
        first.record_iteration(run_id, iteration(0, stored.sha256, ["dark"]))
    with History.open(url, tmp_path / "images") as second:
        assert second.get_run(run_id).iterations_detail[0].selected == ["dark"]
        assert second.open_image(stored.sha256).size == (3, 3)


def test_checkpoints_sit_beside_the_history_file(history, tmp_path):
    assert history.checkpoint_path == tmp_path / "history.checkpoints.sqlite"


def test_default_location_is_in_arpo_home(arpo_home: Path):
    with History.open() as history:
        stored = history.store_image(Image.new("RGB", (2, 2)), "reference")
        assert (arpo_home / "arpo.db").is_file()
        assert history.checkpoint_path == arpo_home / "arpo.checkpoints.sqlite"
        assert stored.path.is_relative_to(arpo_home / "images")


def test_in_memory_history_is_shared_across_sessions(tmp_path):
    with History.open("sqlite://", tmp_path / "images") as history:
        stored = history.store_image(Image.new("RGB", (2, 2)), "reference")
        run_id = history.create_run(stored.sha256, "cat.jpg", {})
        assert [summary.id for summary in history.list_runs()] == [run_id]


def test_ids_never_collide(history, reference, monkeypatch):
    repeated = itertools.chain(["aaaaaaaaaaaa", "aaaaaaaaaaaa"], itertools.repeat("bbbbbbbbbbbb"))
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(repeated))
    assert history.create_run(reference.sha256, "a.jpg", {}) == "aaaaaaaaaaaa"
    assert history.create_run(reference.sha256, "b.jpg", {}) == "bbbbbbbbbbbb"
