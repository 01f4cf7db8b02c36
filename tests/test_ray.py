"""`arpo batch --ray` and `arpo eval --ray`: a local Ray cluster of two CPU workers pulls a batch's items (or an
evaluation's units) from the queue in
the history, on SQLite and on PostgreSQL; a worker killed mid-item leaves no duplicate and the batch
completes."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest
from cli_harness import run_arpo
from test_batch_runs import make_images

from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs.batch import item_key
from arpo.storage.history import History

ray = pytest.importorskip("ray")

OFFLINE = RunConfig(models="tiny", refine="none", steps=1)


@pytest.fixture(scope="module")
def local_cluster():
    """Two CPU slots on this machine, shared by the tests of this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _database(request, tmp_path, kind: str) -> str:
    return f"sqlite:///{tmp_path}/batch.db" if kind == "sqlite" else request.getfixturevalue("postgres_url")


def _one_contiguous_run_per_image(url: str, images, count: int) -> list:
    with History.open(url, images) as history:
        runs = history.list_runs(limit=100)
        assert len(runs) == count and {run.status for run in runs} == {"finished"}
        assert len({run.reference_name for run in runs}) == count, "no image ran twice"
        for run in runs:
            indexes = [record.index for record in history.get_run(run.id).iterations_detail]
            assert indexes == list(range(len(indexes))), "no iteration lost or repeated"
        return runs


def test_a_worker_killed_mid_item_loses_only_that_item_which_another_worker_finishes(local_cluster, tmp_path, arpo_home):
    from scripted_server import BrainServer, ScriptedBrain

    from arpo.graphs.ray_batch import run_batch_on_ray

    folder = tmp_path / "images"
    make_images(folder, 4)
    url = f"sqlite:///{tmp_path}/batch.db"
    history = History.open(url, tmp_path / "store")
    killed: list[str] = []

    def kill_a_worker_mid_item(keys: list[str]) -> None:
        """SIGKILL the process of a Ray worker once it holds an item whose run has finished an iteration."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for state in history.batches.states(keys).values():
                if state.status == "running" and state.claimed_by and state.run_id:
                    if history.get_run(state.run_id).iterations_detail:
                        os.kill(int(state.claimed_by.split(":")[1]), signal.SIGKILL)
                        killed.append(state.run_id)
                        return
            time.sleep(0.05)

    with BrainServer(ScriptedBrain(latency_s=0.3, phrases_per_reply=2)) as server:
        brain = BrainChoice(provider="vllm", base_url=server.base_url, model="scripted")
        config = RunConfig(models="tiny", refine="none", steps=1, vlm=brain, llm=brain)
        keys = [item_key(hashlib.sha256(path.read_bytes()).hexdigest(), config) for path in sorted(folder.iterdir())]
        killer = threading.Thread(target=kill_a_worker_mid_item, args=(keys,), daemon=True)
        killer.start()
        report = run_batch_on_ray(folder, config, workers=2, database_url=url, image_root=tmp_path / "store")
        killer.join(timeout=5)
    assert killed, "no worker was caught mid-item"
    assert (report.finished, report.failed) == (4, 0)
    runs = _one_contiguous_run_per_image(url, tmp_path / "store", 4)
    assert killed[0] in {run.id for run in runs}, "the killed worker's run was continued, not started again"
    history.close()


def test_arpo_batch_ray_on_postgres_through_the_cli_with_one_progress_bar(local_cluster, capsys, request, tmp_path, arpo_home):
    """(SQLite: the killed-worker test above.)"""
    make_images(tmp_path / "images", 3)
    url = _database(request, tmp_path, "postgresql")
    args = ("batch", tmp_path / "images", "--models", "tiny", "--brain", "offline", "--steps", "1", "--db", url,
            "--images", tmp_path / "store", "--ray", "local", "--workers", "2", "--json")
    outcome = run_arpo(capsys, *args)
    assert outcome.exit_code == 0, outcome.stderr
    assert (outcome.json()["finished"], outcome.json()["failed"]) == (3, 0)
    assert "3/3" in outcome.stderr  # the progress bar counted every item, wherever it ran
    runs = _one_contiguous_run_per_image(url, tmp_path / "store", 3)
    assert sorted(run.id for run in runs) == sorted(item["run_id"] for item in outcome.json()["items"])
    again = run_arpo(capsys, *args)
    assert all(item["skipped"] for item in again.json()["items"])


def test_ray_flags_are_checked_before_anything_runs(capsys, tmp_path):
    make_images(tmp_path / "images", 1)
    outcome = run_arpo(capsys, "batch", tmp_path / "images", "--models", "tiny", "--brain", "offline", "--workers", "2")
    assert outcome.exit_code == 2 and "--workers sets how many Ray workers" in outcome.stderr


def _eval_folder(tmp_path):
    folder = tmp_path / "refs"
    make_images(folder, 2)
    return folder


def test_an_eval_worker_killed_mid_unit_is_replaced_and_its_arpo_run_continued(local_cluster, capsys, tmp_path, arpo_home):
    from scripted_server import BrainServer, ScriptedBrain

    history = History.open()
    killed: list[str] = []

    def kill_the_worker_of_a_started_arpo_run() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for evaluation in [record.id for record in history.evaluations.evaluations()]:
                pending = [cell for cell in history.evaluations.cells(evaluation) if cell.status == "pending" and cell.run_id]
                for state in history.batches.items_of(f"e{evaluation[:11]}"):
                    if state.status == "running" and state.claimed_by and pending and "arpo" in state.image:
                        if history.get_run(pending[0].run_id).iterations_detail:
                            os.kill(int(state.claimed_by.split(":")[1]), signal.SIGKILL)
                            killed.append(pending[0].run_id)
                            return
            time.sleep(0.05)

    with BrainServer(ScriptedBrain(latency_s=0.3, phrases_per_reply=2)) as server:
        killer = threading.Thread(target=kill_the_worker_of_a_started_arpo_run, daemon=True)
        killer.start()
        args = ("eval", _eval_folder(tmp_path), "--models", "tiny", "--methods", "arpo-vanilla", "--steps", "2",
                "--seeds", "1", "--metrics", "clip_t", "--brain", "vllm", "--base-url", server.base_url,
                "--out", tmp_path / "out", "--ray", "local", "--workers", "2", "--json")
        outcome = run_arpo(capsys, *args)
        killer.join(timeout=5)
        again = run_arpo(capsys, *args)  # everything done: the reports are rewritten, nothing runs
    assert again.exit_code == 0 and "already done" in again.stderr
    assert outcome.exit_code == 0, outcome.stderr
    assert killed, "no worker was caught mid-unit"
    assert outcome.json()["rows"] and "[2/2] cells done" in outcome.stderr, outcome.stderr
    cells = history.evaluations.cells(outcome.json()["evaluation_id"], status="done")
    assert len(cells) == 2 and killed[0] in {cell.run_id for cell in cells}, "the killed unit's run was continued"
    runs = [run for run in history.list_runs(limit=50) if run.kind == "eval"] or history.list_runs(limit=50)
    assert len(runs) == 2, "one ARPO run per image, none started twice"
