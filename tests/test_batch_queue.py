"""A batch's items are a queue in the history: workers in any number of threads and processes claim
each item once, keep it while they beat, and lose it to the next worker when they die. Checked on
SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from test_batch_runs import make_images

from arpo.graphs.batch_worker import release_dead_neighbours
from arpo.storage.history import History

KEYS = [f"{number:064x}" for number in range(40)]


@pytest.fixture(params=["sqlite", "postgresql"])
def history(request, tmp_path):
    url = f"sqlite:///{tmp_path}/queue.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = History.open(url, tmp_path / "images")
    opened.batches.ensure_batch("batch0000000", "folder", {}, len(KEYS))
    opened.batches.enqueue("batch0000000", [(key, f"image-{key[-2:]}.png") for key in KEYS])
    yield opened
    opened.close()


def test_workers_racing_for_items_each_get_different_ones(history):
    store = history.batches
    claimed: dict[str, list[str]] = {}

    def work(name: str) -> None:
        mine = claimed.setdefault(name, [])
        while (item := store.claim_next(KEYS, name, lease_s=60)) is not None:
            mine.append(item.key)

    threads = [threading.Thread(target=work, args=(f"worker-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [key for keys in claimed.values() for key in keys]
    assert sorted(everything) == KEYS, "every item claimed exactly once"
    assert sum(1 for keys in claimed.values() if keys) > 1, "the work was shared"


def test_an_item_whose_worker_went_quiet_is_taken_over_after_the_lease(history):
    store = history.batches
    first = store.claim_next(KEYS[:1], "gone", lease_s=60)
    assert store.claim_next(KEYS[:1], "other", lease_s=60) is None  # held, and within its lease
    taken = store.claim_next(KEYS[:1], "other", lease_s=0)  # the same claim, seen as expired
    assert (first.key, taken.key, taken.claimed_by) == (KEYS[0], KEYS[0], "other")


def test_a_released_or_finished_item_leaves_its_worker(history):
    store = history.batches
    held = [store.claim_next(KEYS, "dying", lease_s=60).key for _ in range(3)]
    assert sorted(store.release("dying")) == sorted(held)
    again = store.claim_next(KEYS, "alive", lease_s=60)
    store.record(again.key, batch_id="batch0000000", image=again.image, status="finished")
    assert store.item(again.key).claimed_by is None and store.holders(KEYS) == set()


def test_failed_items_wait_again_when_the_batch_is_queued_again(history):
    store = history.batches
    item = store.claim_next(KEYS, "w", lease_s=60)
    store.record(item.key, batch_id="batch0000000", image=item.image, status="failed", error="boom")
    store.enqueue("batch0000000", [(item.key, item.image)])
    assert store.item(item.key).status == "pending"


def test_items_of_a_killed_process_on_this_machine_are_handed_back_at_once(history):
    store = history.batches
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"{socket.gethostname()}:{dead.pid}:thread-0"
    store.claim_next(KEYS, holder, lease_s=60)
    store.claim_next(KEYS, f"{socket.gethostname()}:{os.getpid()}:thread-0", lease_s=60)  # alive: kept
    assert len(release_dead_neighbours(store, KEYS)) == 1
    assert store.holders(KEYS) == {f"{socket.gethostname()}:{os.getpid()}:thread-0"}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_batch_processes_share_one_batch_without_duplicating_anything(request, tmp_path, arpo_home, database):
    from scripted_server import BrainServer, ScriptedBrain

    folder = tmp_path / "images"
    make_images(folder, 6)
    url = f"sqlite:///{arpo_home}/shared.db" if database == "sqlite" else request.getfixturevalue("postgres_url")
    with BrainServer(ScriptedBrain(latency_s=0.2, phrases_per_reply=2)) as server:
        command = [sys.executable, "-m", "arpo.app.cli", "batch", str(folder), "--models", "tiny", "--brain", "vllm",
                   "--base-url", server.base_url, "--steps", "1", "--db", url, "--images", str(tmp_path / "store"),
                   "--json"]
        processes = [subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2)]
        outcomes = [process.communicate(timeout=280) for process in processes]
    for process, (stdout, stderr) in zip(processes, outcomes):
        assert process.returncode == 0, stderr
    reports = [json.loads(stdout) for stdout, _ in outcomes]
    assert all((report["finished"], report["failed"]) == (6, 0) for report in reports)
    assert [item["run_id"] for item in reports[0]["items"]] == [item["run_id"] for item in reports[1]["items"]]

    with History.open(url, tmp_path / "store") as history:
        runs = history.list_runs(limit=100)
        assert len(runs) == 6 and {run.status for run in runs} == {"finished"}, "one run per image"
        assert len({run.reference_name for run in runs}) == 6
        for run in runs:
            indexes = [record.index for record in history.get_run(run.id).iterations_detail]
            assert indexes == list(range(len(indexes))), "no iteration lost or repeated"
