"""Brain calls in the history: one row per request with its status, format and error, and a history
written before those columns existed still opens and takes them."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from PIL import Image

from arpo.core.brain_calls import BrainCallRecord
from arpo.storage.history import History

NEW_COLUMNS = ("call_id", "status_code", "response_format", "finish_reason", "server")


def failed_then_answered() -> list[BrainCallRecord]:
    common = {"call_id": "c1", "role": "proposer", "model": "qwen", "provider": "vllm",
              "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "latency_s": 0.2,
              "server": "http://127.0.0.1:8080/v1"}
    return [
        BrainCallRecord(**common, attempts=1, ok=False, status_code=500, response_format="json_schema",
                        error="response_format json_schema refused: 500: Input should be 'text' or 'json_object'"),
        BrainCallRecord(**common, attempts=1, ok=True, status_code=200, response_format="json_object",
                        finish_reason="length", prompt_tokens=10, completion_tokens=300),
    ]


def new_run(history: History) -> str:
    stored = history.store_image(Image.new("RGB", (8, 8), "red"), role="reference")
    return history.create_run(stored.sha256, "red.png", {})


def test_every_request_is_stored_with_status_format_and_error(tmp_path):
    history = History.open(f"sqlite:///{tmp_path}/h.db", tmp_path / "images")
    run_id = new_run(history)

    history.record_brain_calls(run_id, 2, failed_then_answered())

    refused, answered = history.brain_calls(run_id)
    assert (refused.ok, refused.status_code, refused.response_format) == (False, 500, "json_schema")
    assert "Input should be 'text' or 'json_object'" in refused.error
    assert (answered.ok, answered.response_format, answered.finish_reason) == (True, "json_object", "length")
    assert refused.call_id == answered.call_id == "c1" and answered.iteration_index == 2
    assert history.get_run(run_id).brain_calls == 2


def test_a_history_from_before_the_new_columns_opens_and_takes_them(tmp_path):
    from test_history_columns import made_by_release_0_1

    url = f"sqlite:///{tmp_path}/old.db"
    made_by_release_0_1(url)  # no migrations yet, and an early build's brain_calls, without the newer columns
    with sqlite3.connect(tmp_path / "old.db") as db:
        for column in NEW_COLUMNS:
            db.execute(f"ALTER TABLE brain_calls DROP COLUMN {column}")
        assert not set(NEW_COLUMNS) & {row[1] for row in db.execute("PRAGMA table_info(brain_calls)")}

    reopened = History.open(url, tmp_path / "images")
    run_id = new_run(reopened)
    reopened.record_brain_calls(run_id, None, failed_then_answered())

    assert [call.status_code for call in reopened.brain_calls(run_id)] == [500, 200]
