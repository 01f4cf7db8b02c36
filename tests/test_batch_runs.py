"""Batch runs end to end with tiny models: completion, idempotent re-runs, failures, exports, concurrency,
and a batch killed with SIGKILL that a re-run finishes without duplicating anything."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from cli_harness import run_arpo
from PIL import Image

from scripted_server import BrainServer, ScriptedBrain
from arpo.app.batch_export import EXPORT_COLUMNS, write_batch_exports
from arpo.core.run_config import RunConfig
from arpo.graphs.batch import item_key, run_batch
from arpo.graphs.batch_manifest import BatchItem
from arpo.storage.history import History

TINY_OFFLINE = ("--models", "tiny", "--brain", "offline")
TINY_CONFIG = RunConfig(models="tiny", refine="none", steps=1)  # offline brains by default
TINY_QUICK = TINY_CONFIG.model_copy(update={"steps": 0})  # one generation per image, no proposal round


@pytest.fixture(scope="module")
def tiny_models():
    from arpo.tools.model_stack import build_model_stack

    return build_model_stack("tiny")


def make_images(folder, count, size=24):
    """`count` distinct small images: a colour gradient whose hue and direction differ per image."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        image = Image.new("RGB", (size, size))
        image.putdata(
            [
                ((x * 10 + number * 37) % 256, (y * 10 + number * 91) % 256, (number * 53) % 256)
                for y in range(size)
                for x in range(size)
            ]
        )
        path = folder / f"image-{number:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def db_rows(db_path, query, *params):
    with sqlite3.connect(db_path) as db:
        return db.execute(query, params).fetchall()


def iteration_rows(db_path):
    return db_rows(
        db_path,
        "SELECT i.run_id, i.[index], i.prompt, i.generated_sha256, count(c.id) FROM iterations i "
        "LEFT JOIN candidates c ON c.iteration_id = i.id GROUP BY i.id ORDER BY i.run_id, i.[index]",
    )


def test_cli_batch_of_twenty_completes_exports_and_reruns_without_new_runs(capsys, tmp_path, arpo_home):
    folder = tmp_path / "images"
    make_images(folder, 20)
    out = tmp_path / "export"
    args = ("batch", folder, *TINY_OFFLINE, "--steps", "1", "--concurrency", "2", "--json")

    first = run_arpo(capsys, *args, "--export", out)
    assert first.exit_code == 0, first.stderr
    report = first.json()
    assert (report["finished"], report["failed"], report["skipped"]) == (20, 0, 0)
    assert [item["image"] for item in report["items"]] == [f"image-{n:02d}.png" for n in range(20)]
    assert "20/20" in first.stderr and "0 failed, 0 remaining" in first.stderr  # the progress bar's last state

    db_path = arpo_home / "arpo.db"
    runs = db_rows(db_path, "SELECT id, kind, status, reference_name FROM runs ORDER BY reference_name")
    assert len(runs) == 20
    assert {(kind, status) for _, kind, status, _ in runs} == {("batch", "finished")}
    assert sorted(item["run_id"] for item in report["items"]) == sorted(run[0] for run in runs)
    for item in report["items"]:
        assert item["iterations"] == 2  # the initial prompt and one proposal round (--steps 1)
        assert item["stopped_because"] == "reached the step limit (1)"
        assert item["best_prompt"] and -1 <= item["best_clip_i"] <= 1
    iterations_before = iteration_rows(db_path)
    assert len(iterations_before) == 40

    # The exports hold the same table in both formats.
    with (out / "results.csv").open(newline="") as table:
        csv_rows = list(csv.DictReader(table))
    jsonl_rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert list(csv_rows[0]) == list(EXPORT_COLUMNS) == list(jsonl_rows[0])
    assert [row["run_id"] for row in csv_rows] == [row["run_id"] for row in jsonl_rows] == [
        item["run_id"] for item in report["items"]
    ]
    assert [row["best_prompt"] for row in csv_rows] == [item["best_prompt"] for item in report["items"]]
    assert [float(row["best_clip_i"]) for row in csv_rows] == pytest.approx([row["best_clip_i"] for row in jsonl_rows])

    again = run_arpo(capsys, *args)
    assert again.exit_code == 0, again.stderr
    rerun = again.json()
    assert (rerun["finished"], rerun["skipped"]) == (20, 20)
    assert [item["run_id"] for item in rerun["items"]] == [item["run_id"] for item in report["items"]]
    assert db_rows(db_path, "SELECT count(*) FROM runs")[0][0] == 20
    assert iteration_rows(db_path) == iterations_before
    assert db_rows(db_path, "SELECT count(*), count(DISTINCT batch_id) FROM batch_items") == [(20, 1)]


def test_a_failing_item_is_recorded_and_the_rest_finish(tmp_path, arpo_home, tiny_models):
    good = make_images(tmp_path / "set", 3)
    (tmp_path / "set" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    manifest = tmp_path / "set" / "manifest.jsonl"
    rows = [
        {"image": "image-00.png", "ground_truth": "a gradient"},
        {"image": "missing.png"},
        {"image": "broken.png", "ground_truth": "never read"},
        {"image": "image-01.png"},
        {"image": str(good[2])},
        {"image": "./image-00.png", "ground_truth": "same pixels, listed twice"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    seen = []

    report = run_batch(manifest, TINY_QUICK, models=tiny_models, on_item=seen.append)
    assert [item.status for item in report.items] == ["finished", "failed", "failed", "finished", "finished", "finished"]
    assert (report.finished, report.failed) == (4, 2)
    assert sorted(item.image for item in seen) == sorted(row["image"] for row in rows)
    missing, broken = report.items[1], report.items[2]
    assert missing.error == f"{tmp_path / 'set' / 'missing.png'}: cannot read (No such file or directory)"
    assert broken.error.startswith(f"{tmp_path / 'set' / 'broken.png'}: ")
    assert missing.run_id is None and broken.run_id is None
    # The same pixels listed twice are one item: one run, reported on both rows with their own labels.
    assert report.items[5].run_id == report.items[0].run_id
    assert (report.items[5].ground_truth, report.items[0].ground_truth) == ("same pixels, listed twice", "a gradient")

    history = History.open()
    assert len(history.list_runs()) == 3
    stored = {state.image: state for state in history.batches.items_of(report.batch_id)}
    assert stored["broken.png"].status == "failed" and stored["broken.png"].error == broken.error
    assert stored["image-01.png"].status == "finished"

    jsonl, csv_path = write_batch_exports(report, tmp_path / "out")
    exported = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [row["status"] for row in exported] == [item.status for item in report.items]
    assert exported[1]["error"] == missing.error and exported[1]["best_prompt"] is None
    assert exported[0]["ground_truth"] == "a gradient"
    with csv_path.open(newline="") as table:
        csv_rows = list(csv.DictReader(table))
    assert csv_rows[1]["best_prompt"] == "" and csv_rows[1]["error"] == missing.error
    assert csv_rows[2]["ground_truth"] == "never read"

    # Again: finished items are skipped, failed ones are tried again (and fail again), no run is added.
    again = run_batch(manifest, TINY_QUICK, models=tiny_models)
    assert [item.skipped for item in again.items] == [True, False, False, True, True, True]
    assert [item.run_id for item in again.items] == [item.run_id for item in report.items]
    assert len(history.list_runs()) == 3


def test_a_run_opened_but_not_recorded_before_a_kill_is_taken_up_not_duplicated(tmp_path, arpo_home, tiny_models):
    from arpo.graphs.invocation import build_context, start_run
    from arpo.tools.reference_image import load_reference_image

    (path,) = make_images(tmp_path / "images", 1)
    history = History.open()
    store = history.batches
    key = item_key(_sha256_of(path), TINY_QUICK)
    # What a kill right after `start_run` leaves: the item marked running, its new run not yet recorded.
    store.ensure_batch("killedbatch0", "earlier", {}, 1)
    store.record(key, batch_id="killedbatch0", image=path.name, status="running")
    context = build_context(TINY_QUICK, history, tiny_models)
    orphan = start_run(history, TINY_QUICK, load_reference_image(path), context, kind="batch").run_id

    report = run_batch(tmp_path / "images", TINY_QUICK, models=tiny_models, history=history)
    assert [(item.status, item.run_id) for item in report.items] == [("finished", orphan)]
    assert [run.id for run in history.list_runs()] == [orphan]
    assert store.item(key).run_id == orphan


def test_a_kill_between_a_nodes_writes_and_its_checkpoint_is_continued_to_the_end(tmp_path, arpo_home, tiny_models):
    (path,) = make_images(tmp_path / "images", 1)
    history = History.open()
    report = run_batch(tmp_path / "images", TINY_QUICK, models=tiny_models, history=history)
    (first,) = report.items
    # What a kill right after the last generate node leaves: that node's writes are saved, the step's
    # checkpoint is not, the finish node never ran, and the item and its run still say "running".
    with sqlite3.connect(history.checkpoint_path) as checkpoints:
        newest = checkpoints.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? ORDER BY checkpoint_id DESC LIMIT 2",
            (first.run_id,),
        ).fetchall()
        for (checkpoint_id,) in newest:
            for table in ("checkpoints", "writes"):
                checkpoints.execute(
                    f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_id = ?", (first.run_id, checkpoint_id)
                )
    history.set_status(first.run_id, "running")
    history.batches.record(first.key, batch_id=report.batch_id, image=path.name, status="running")

    (again,) = run_batch(tmp_path / "images", TINY_QUICK, models=tiny_models, history=history).items
    assert (again.status, again.run_id, again.skipped) == ("finished", first.run_id, False)
    detail = history.get_run(first.run_id)
    assert (detail.status, detail.best_prompt, detail.stopped_because) == ("finished", first.best_prompt, first.stopped_because)
    assert len(detail.iterations_detail) == 1


def test_concurrency_two_gives_the_same_results_as_one(tmp_path, arpo_home, tiny_models):
    paths = make_images(tmp_path / "images", 3)
    items = [BatchItem(image_path=path, label=path.name) for path in paths]
    one = run_batch(items, TINY_CONFIG, models=tiny_models, concurrency=1, database_url=f"sqlite:///{tmp_path}/one.db")
    two = run_batch(items, TINY_CONFIG, models=tiny_models, concurrency=2, database_url=f"sqlite:///{tmp_path}/two.db")

    def outcome(report):
        return [(i.image, i.status, i.best_prompt, i.last_prompt, i.iterations, i.key) for i in report.items]

    assert outcome(one) == outcome(two)
    assert [i.best_clip_i for i in one.items] == pytest.approx([i.best_clip_i for i in two.items], abs=1e-6)
    assert len({i.key for i in one.items}) == 3
    assert one.items[0].key == item_key(_sha256_of(paths[0]), TINY_CONFIG)
    # The key follows the configuration: another seed is another item.
    assert item_key(_sha256_of(paths[0]), TINY_CONFIG.model_copy(update={"seed": 1})) != one.items[0].key


def _sha256_of(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_batch_is_finished_by_a_rerun_without_duplicates(capsys, tmp_path, arpo_home):
    folder = tmp_path / "images"
    make_images(folder, 4)
    db_path = arpo_home / "arpo.db"
    # Slow brains keep items busy long enough to kill the batch with one item done and others under way.
    with BrainServer(ScriptedBrain(latency_s=0.25, phrases_per_reply=2)) as server:
        args = [
            "batch", str(folder), "--models", "tiny", "--brain", "vllm", "--base-url", server.base_url,
            "--steps", "1", "--concurrency", "2",
        ]
        process = subprocess.Popen(
            [sys.executable, "-m", "arpo.app.cli", *args],
            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            _wait_for(_mid_brain_call_after_progress(db_path, server), 120, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        items_before = dict(db_rows(db_path, "SELECT key, status FROM batch_items"))
        runs_before = db_rows(db_path, "SELECT id, status FROM runs ORDER BY id")
        iterations_before = iteration_rows(db_path)
        assert "finished" in items_before.values() and "running" in items_before.values()
        assert len(runs_before) < 4 or any(status == "running" for _, status in runs_before)

        outcome = run_arpo(capsys, *args, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    report = outcome.json()
    assert (report["finished"], report["failed"]) == (4, 0)
    # Items done before the kill were skipped, started ones kept their run, and no image has two runs.
    done_before = {key for key, status in items_before.items() if status == "finished"}
    assert {item["key"] for item in report["items"] if item["skipped"]} == done_before
    runs_after = db_rows(db_path, "SELECT id, status, kind FROM runs ORDER BY id")
    assert len(runs_after) == 4 and {(status, kind) for _, status, kind in runs_after} == {("finished", "batch")}
    assert {run_id for run_id, _ in runs_before} <= {run_id for run_id, _, _ in runs_after}
    assert sorted(item["run_id"] for item in report["items"]) == [run_id for run_id, _, _ in runs_after]
    iterations_after = iteration_rows(db_path)
    by_run = {}
    for run_id, index, *_ in iterations_after:
        by_run.setdefault(run_id, []).append(index)
    assert all(indexes == list(range(len(indexes))) for indexes in by_run.values()), "no iteration repeated"
    # Iterations that had finished (their candidates stored) before the kill are kept exactly as they were.
    finished_before = [row for row in iterations_before if row[4] > 0]
    assert set(finished_before) <= set(iterations_after)


def _one_done_and_another_started(db_path):
    try:
        statuses = [status for (status,) in db_rows(db_path, "SELECT status FROM batch_items")]
        started = db_rows(
            db_path,
            "SELECT count(DISTINCT i.run_id) FROM iterations i JOIN batch_items b ON b.run_id = i.run_id "
            "WHERE b.status = 'running'",
        )[0][0]
    except sqlite3.OperationalError:  # the tables do not exist yet
        return False
    return "finished" in statuses and started >= 1


def _mid_brain_call_after_progress(db_path, server):
    """True once an item is done and another has started, at the moment a new brain request arrives.

    Killing then, while that request waits out the brain's latency, is sure to catch its item
    unfinished; killing as soon as the rows look right could land in an item's last few milliseconds.
    """
    requests_at_progress = None

    def condition():
        nonlocal requests_at_progress
        if requests_at_progress is None:
            if _one_done_and_another_started(db_path):
                requests_at_progress = len(server.requests)
            return False
        return len(server.requests) > requests_at_progress

    return condition


def _wait_for(condition, timeout_s, process):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"arpo batch exited early: {process.stderr.read()}")
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the batch to make progress")


def test_missing_brain_key_stops_the_batch_before_any_run(capsys, tmp_path, arpo_home):
    make_images(tmp_path / "images", 2)
    outcome = run_arpo(capsys, "batch", tmp_path / "images", "--models", "tiny", "--brain", "openai")
    assert outcome.exit_code == 3
    assert len(outcome.stderr.strip().splitlines()) == 1 and "OPENAI_API_KEY" in outcome.stderr
    assert db_rows(arpo_home / "arpo.db", "SELECT count(*) FROM runs") == [(0,)]
