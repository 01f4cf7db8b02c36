"""`arpo batch --parallel K`: K items in lockstep, their renders and CLIP encodings that come together
run as one batched forward; the results are those of running the items one after another."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from cli_harness import run_arpo
from test_batch_runs import make_images

from arpo.core.run_config import RunConfig
from arpo.graphs.batch import run_batch
from arpo.graphs.checkpoints import history_checkpointer
from arpo.storage.history import History
from arpo.tools.micro_batching import MicroBatcher
from arpo.tools.model_stack import build_model_stack


@pytest.fixture(scope="module")
def tiny_models():
    return build_model_stack("tiny")


def _calls_from_threads(batcher, requests):
    results = {}

    def call(request):
        results[request] = batcher(request)

    threads = [threading.Thread(target=call, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_calls_that_come_together_run_as_one_batch_and_each_gets_its_own_result():
    batcher = MicroBatcher(lambda requests: [request * 10 for request in requests], lambda: 4, wait_s=5)
    started = time.perf_counter()
    assert _calls_from_threads(batcher, [1, 2, 3, 4]) == {1: 10, 2: 20, 3: 30, 4: 40}
    assert batcher.batches == [4] and time.perf_counter() - started < 4, "no waiting once everyone is in"


def test_a_lone_call_runs_after_its_wait_and_a_failure_reaches_every_caller():
    lone = MicroBatcher(lambda requests: requests, lambda: 3, wait_s=0.05)
    assert lone("only") == "only" and lone.batches == [1]

    def broken(requests):
        raise RuntimeError("the forward failed")

    failing = MicroBatcher(broken, lambda: 2, wait_s=5)
    errors = []

    def call(request):
        try:
            failing(request)
        except RuntimeError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == ["the forward failed"] * 2


def test_a_batched_render_is_each_seed_s_own_image(tiny_models):
    t2i = tiny_models.text_to_image
    requests = [(f"a cat number {n}", n) for n in range(3)]
    alone = [np.asarray(t2i.generate(prompt, seed), dtype=int) for prompt, seed in requests]
    together = [np.asarray(image, dtype=int) for image in t2i.generate_many(requests)]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(alone, together)), "the same image, to float rounding"
    assert not all((a == alone[0]).all() for a in alone[1:]), "each seed draws its own noise"


def test_parallel_items_match_the_same_items_run_one_after_another(tiny_models, tmp_path, monkeypatch):
    make_images(tmp_path / "images", 3)
    config = RunConfig(models="tiny", refine="none", steps=2)
    one = run_batch(tmp_path / "images", config, models=tiny_models, database_url=f"sqlite:///{tmp_path}/one.db")
    sizes: list[int] = []
    real = type(tiny_models.text_to_image).generate_many

    def recorded(self, requests):
        sizes.append(len(requests))
        return real(self, requests)

    monkeypatch.setattr(type(tiny_models.text_to_image), "generate_many", recorded)
    three = run_batch(tmp_path / "images", config, models=tiny_models, parallel=3,
                      database_url=f"sqlite:///{tmp_path}/three.db")
    assert [(i.image, i.status, i.best_prompt, i.last_prompt, i.iterations) for i in one.items] == \
        [(i.image, i.status, i.best_prompt, i.last_prompt, i.iterations) for i in three.items]
    assert [i.best_clip_i for i in one.items] == pytest.approx([i.best_clip_i for i in three.items], abs=1e-4)
    assert max(sizes) > 1, "renders of different items were batched"
    assert tiny_models.text_to_image._batcher is None and tiny_models.clip._text_batcher is None  # switched off after


def test_parallel_items_on_a_postgres_history_share_its_checkpoint_connection(tiny_models, tmp_path, postgres_url):
    """The K item threads share one History, and with it one PostgreSQL checkpoint connection
    (graphs/checkpoints.history_checkpointer): every item still finishes as it does alone, and every
    run's checkpoints are its own, ending where the run ended."""
    make_images(tmp_path / "images", 3)
    config = RunConfig(models="tiny", refine="none", steps=2)
    alone = run_batch(tmp_path / "images", config, models=tiny_models, database_url=f"sqlite:///{tmp_path}/one.db")
    together = run_batch(tmp_path / "images", config, models=tiny_models, parallel=3, database_url=postgres_url,
                         image_root=tmp_path / "shared-images")
    assert [(i.image, i.status, i.best_prompt, i.iterations) for i in together.items] == \
        [(i.image, i.status, i.best_prompt, i.iterations) for i in alone.items]
    with History.open(postgres_url, tmp_path / "shared-images") as history:
        with history_checkpointer(history) as saver:
            for item in together.items:
                last = saver.get_tuple({"configurable": {"thread_id": item.run_id, "checkpoint_ns": ""}})
                assert last is not None, f"no checkpoint for {item.image}"
                assert last.checkpoint["channel_values"]["run_id"] == item.run_id
                assert last.checkpoint["channel_values"]["stopped_because"] == item.stopped_because


def test_parallel_is_checked_before_anything_runs(capsys, tmp_path):
    make_images(tmp_path / "images", 1)
    outcome = run_arpo(capsys, "batch", tmp_path / "images", "--models", "tiny", "--brain", "offline", "--parallel", "0")
    assert outcome.exit_code == 2 and "--parallel" in outcome.stderr
