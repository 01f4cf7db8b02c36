"""Work a process does once and reuses, checked by counting calls: the `--init` inverter of a batch or an
evaluation, the offline proposer's phrase indexes, a caption per image across methods, and PH2P's
rendering of its winner."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.core.run_config import RunConfig
from arpo.eval.methods import MethodContext, build_method
from arpo.graphs.batch import run_batch
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.storage.history import History
from arpo.tools import inverters, phrase_bank
from arpo.tools.model_stack import build_model_stack
from arpo.tools.phrase_bank import load_phrase_bank
from arpo.tools.reference_image import load_reference_image


@pytest.fixture
def tiny_models():
    # Per test: the counters, the remembered captions and the shared phrase indexes start from zero.
    return build_model_stack("tiny")


@pytest.fixture
def counted_inverter_builds(monkeypatch):
    """How many times the inversion registry built an inverter, by method name."""
    builds: list[str] = []
    original = inverters.build_inverter

    def counting(method, config, **kwargs):
        builds.append(method)
        return original(method, config, **kwargs)

    monkeypatch.setattr(inverters, "build_inverter", counting)
    return builds


@pytest.fixture
def counted_phrase_indexes(monkeypatch):
    """How many phrase indexes were built (embedded or read from disk)."""
    built: list[int] = []

    class CountedIndex(phrase_bank.PhraseIndex):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(phrase_bank, "PhraseIndex", CountedIndex)
    return built


def gradient_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (24, 24), (40 * index, 200 - 30 * index, 90)).save(folder / f"image-{index}.png")
    return folder


def test_a_batch_builds_its_init_inverter_and_phrase_indexes_once(
    tmp_path, tiny_models, counted_inverter_builds, counted_phrase_indexes
):
    config = RunConfig(models="tiny", refine="none", steps=1, init="pez", inversion_steps=1)
    report = run_batch(gradient_images(tmp_path / "set", 3), config, models=tiny_models, concurrency=2)
    assert [item.status for item in report.items] == ["finished"] * 3
    assert counted_inverter_builds == ["pez"]  # not once per item
    assert len(counted_phrase_indexes) == 4  # one per bank for the whole batch, not four per item


def test_an_evaluations_arpo_method_builds_its_init_inverter_once(tiny_models, counted_inverter_builds):
    config = RunConfig(models="tiny", refine="none", steps=0, init="pez", inversion_steps=1)
    method = build_method("arpo-vanilla", MethodContext(models=tiny_models, history=History.open(), base_config=config))
    reference = load_reference_image(SAMPLE_IMAGE)
    run_ids = {method.recover(reference, seed).run_id for seed in (0, 1)}
    assert len(run_ids) == 2  # two loop runs ...
    assert counted_inverter_builds == ["pez"]  # ... one inverter


def test_caption_and_the_interrogator_modes_caption_an_image_once(tmp_path, tiny_models):
    folder = tmp_path / "ci-data"
    folder.mkdir()
    banks = load_phrase_bank(("mediums", "movements", "flavors"), max_phrases_per_bank=20)
    for name, phrases in {**banks, "artists": ["Hokusai", "Rembrandt"], "negative": ["blurry"]}.items():
        (folder / f"{name}.txt").write_text("\n".join(phrases) + "\n", encoding="utf-8")
    context = MethodContext(models=tiny_models, history=History.open(), base_config=RunConfig(models="tiny", refine="none"),
                            interrogator_data=folder, interrogator_max_flavors=2)
    reference = load_reference_image(SAMPLE_IMAGE)
    captioner = tiny_models.captioner
    results = [build_method(name, context).recover(reference, seed=0) for name in ("caption", "ci-fast", "ci-classic", "ci-best")]
    assert captioner.calls == 1 and captioner.reused_captions == 3
    caption = results[0].prompt
    assert all(result.details["caption"] == caption for result in results[1:])  # the same answer, reused


@pytest.fixture
def logged_renders(tiny_models, monkeypatch):
    """Every (prompt, seed) the tiny text-to-image model renders, in order."""
    renders: list[tuple[str, int]] = []
    t2i = tiny_models.text_to_image
    original = t2i.generate

    def logged(prompt, seed):
        renders.append((prompt, seed))
        return original(prompt, seed)

    monkeypatch.setattr(t2i, "generate", logged)
    return renders


def _ph2p_run(tiny_models, config: RunConfig):
    history = History.open()
    context = build_context(config, history, tiny_models)
    return history, start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)


def test_ph2p_renders_its_winner_once_on_its_own(tiny_models, logged_renders):
    from arpo.graphs.inversion_run import run_inversion

    history, handle = _ph2p_run(tiny_models, RunConfig(models="tiny", refine="none", method="ph2p", inversion_steps=2))
    result = run_inversion(handle)
    shortlist = [candidate["prompt"] for candidate in result.details["rescored"]]
    assert sorted(logged_renders) == sorted((prompt, 0) for prompt in shortlist)  # each once, the winner too
    [iteration] = history.get_run(handle.run_id).iterations_detail
    stored = history.open_image(iteration.generated_sha256)
    assert stored.tobytes() == tiny_models.text_to_image.generate(result.prompt, 0).tobytes()  # as if rendered anew


def test_ph2p_as_init_hands_its_winner_to_the_loops_first_iteration(tiny_models, logged_renders):
    history, handle = _ph2p_run(tiny_models, RunConfig(models="tiny", refine="none", init="ph2p", inversion_steps=2, steps=0))
    execute_run(handle)
    [iteration] = history.get_run(handle.run_id).iterations_detail
    assert (iteration.prompt, 0) in logged_renders  # PH2P's winner became the loop's first prompt
    assert len(logged_renders) == len(set(logged_renders))  # and nothing was rendered twice
    stored = history.open_image(iteration.generated_sha256)
    assert stored.tobytes() == tiny_models.text_to_image.generate(iteration.prompt, 0).tobytes()
