"""Evaluation methods and data sets on the tiny stack: captioner, VLM caption (scripted brain),
CLIP-Interrogator's modes, name checks, folder and manifest reading, the self-consistent set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_brain import brain_server  # noqa: F401  (fixture)
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.agents.prompt_writer import clean_prompt_reply
from scripted_server import ScriptedReply
from arpo.core.errors import BrainError, InvalidInputError
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.eval.datasets import load_dataset, make_self_consistent_set
from arpo.eval.methods import MethodContext, build_method, validate_method_names
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.phrase_bank import load_phrase_bank
from arpo.tools.reference_image import load_reference_image


@pytest.fixture(scope="module")
def stack():
    return build_model_stack("tiny")


@pytest.fixture
def reference():
    return load_reference_image(SAMPLE_IMAGE)


def _context(stack, config: RunConfig | None = None, interrogator_data: Path | None = None) -> MethodContext:
    return MethodContext(models=stack, history=History.open(), base_config=config or RunConfig(models="tiny", refine="none"),
                         interrogator_data=interrogator_data, interrogator_max_flavors=4)


@pytest.fixture
def small_phrase_lists(tmp_path) -> Path:
    """clip-interrogator's list files, cut short so the tiny CLIP embeds them in a moment."""
    folder = tmp_path / "ci-data"
    folder.mkdir()
    banks = load_phrase_bank(("mediums", "movements", "flavors"), max_phrases_per_bank=30)
    lists = {
        "mediums": banks["mediums"], "movements": banks["movements"], "flavors": banks["flavors"],
        "artists": ["Claude Monet", "Hokusai", "Frida Kahlo", "Rembrandt"], "negative": ["blurry", "ugly"],
    }
    for name, phrases in lists.items():
        (folder / f"{name}.txt").write_text("\n".join(phrases) + "\n", encoding="utf-8")
    return folder


def test_caption_method_returns_the_captioners_caption_at_no_t2i_cost(stack, reference):
    method = build_method("caption", _context(stack))
    result = method.recover(reference, seed=0)
    assert result.prompt == stack.captioner.caption(reference.image)
    assert result.cost.t2i_calls == 0 and result.cost.brain_calls == 0
    assert method.seed_dependent is False
    assert result.search_seeds == []  # renders nothing, so no seed of an evaluation can leak into it


def test_vlm_caption_asks_once_with_the_image_and_counts_tokens(stack, reference, brain_server):
    brain_server.enqueue(ScriptedReply.text('Prompt: "a tabby cat on a sill, oil painting, warm light"'))
    config = RunConfig(models="tiny", refine="none", vlm=BrainChoice(provider="vllm", base_url=brain_server.base_url))
    result = build_method("vlm-caption", _context(stack, config)).recover(reference, seed=0)

    assert result.prompt == "a tabby cat on a sill, oil painting, warm light"
    assert result.cost.brain_calls == 1
    assert result.cost.prompt_tokens > 85 and result.cost.completion_tokens > 0
    (request,) = brain_server.requests
    assert len(request.image_urls) == 1 and "text-to-image" in request.text


def test_vlm_caption_with_an_empty_reply_is_a_brain_error(stack, reference, brain_server):
    brain_server.enqueue(ScriptedReply.text('""'))
    config = RunConfig(models="tiny", refine="none", vlm=BrainChoice(provider="vllm", base_url=brain_server.base_url))
    with pytest.raises(BrainError, match="no prompt"):
        build_method("vlm-caption", _context(stack, config)).recover(reference, seed=0)


def test_vlm_caption_needs_a_vlm_brain(stack):
    with pytest.raises(InvalidInputError, match="vlm-caption needs a VLM brain"):
        build_method("vlm-caption", _context(stack))


@pytest.mark.parametrize(
    ("reply", "prompt"),
    [
        ("```\na cat, oil painting\n```", "a cat, oil painting"),
        ("**Prompt:** 'misty harbour at dawn'", "misty harbour at dawn"),
        ("  a dog\n  in  fog ", "a dog in fog"),
    ],
)
def test_prompt_replies_are_cleaned(reply, prompt):
    assert clean_prompt_reply(reply) == prompt


def test_clip_interrogator_modes_build_on_the_caption_and_the_phrase_lists(stack, reference, small_phrase_lists, monkeypatch):
    import arpo.eval.methods as methods

    built = []
    build = methods._build_interrogator
    monkeypatch.setattr(methods, "_build_interrogator", lambda context: built.append(1) or build(context))
    context = _context(stack, interrogator_data=small_phrase_lists)
    caption = stack.captioner.caption(reference.image)
    mediums = (small_phrase_lists / "mediums.txt").read_text().split("\n")

    fast = build_method("ci-fast", context).recover(reference, seed=0).prompt
    classic = build_method("ci-classic", context).recover(reference, seed=0).prompt
    best = build_method("ci-best", context).recover(reference, seed=0)

    assert fast.startswith(caption + ", ") and len(fast) > len(caption) + 5
    assert classic.startswith(caption)
    assert any(f", {medium} by " in classic for medium in mediums if medium)
    assert best.prompt.startswith(caption)
    assert best.details == {"mode": "best", "caption": caption}
    assert len(built) == 1  # one interrogator (and one set of phrase embeddings) shared


def test_method_names_are_checked_before_anything_loads():
    assert validate_method_names(["caption", "arpo-vanilla:offline", "caption"]) == ["caption", "arpo-vanilla:offline"]
    with pytest.raises(InvalidInputError, match="unknown method 'blip9'"):
        validate_method_names(["caption", "blip9"])
    with pytest.raises(InvalidInputError, match="only arpo-\\* methods"):
        validate_method_names(["caption:offline"])
    with pytest.raises(InvalidInputError, match="no methods"):
        validate_method_names([])
    with pytest.raises(InvalidInputError, match="enhanced framework needs a describing VLM"):
        validate_method_names(["arpo-enhanced:offline"])


def test_arpo_method_with_a_provider_suffix_switches_both_brains(stack):
    config = RunConfig(models="tiny", refine="none", vlm=BrainChoice(provider="openai"), llm=BrainChoice(provider="openai"), steps=4)
    method = build_method("arpo-enhanced:offline", _context(stack, config))
    run_config = method.run_config(seed=2)
    assert (run_config.vlm.provider, run_config.llm.provider) == ("offline", "offline")
    assert (run_config.framework, run_config.seed, run_config.steps) == ("enhanced", 2, 4)


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (16, 16), (index * 40, 80, 120)).save(folder / name)


def test_a_folder_with_prompts_jsonl_gives_ground_truths(tmp_path):
    _write_images(tmp_path / "set", ["a.png", "b.png"])
    lines = [{"image": "a.png", "prompt": "a blue square", "source": "ai"}, {"image": "b.png", "id": "second"}]
    (tmp_path / "set" / "prompts.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")

    dataset = load_dataset(tmp_path / "set")

    assert [(c.key, c.ground_truth, c.source) for c in dataset.cases] == [("a.png", "a blue square", "ai"), ("second", None, None)]


def test_a_plain_folder_lists_its_images_in_name_order(tmp_path):
    _write_images(tmp_path / "set", ["b.jpg", "a.png"])
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    assert [case.key for case in load_dataset(tmp_path / "set").cases] == ["a.png", "b.jpg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"image": "a.png"}\n{not json}\n', ":2: not a JSON object"),
        ('{"prompt": "x"}\n', ':1: each line needs an "image" path'),
        ('{"image": "missing.png"}\n', "missing.png not found"),
        ('{"image": "a.png", "prompt": 3}\n', '"prompt" must be text'),
        ('{"image": "a.png", "generation_seed": "7"}\n', '"generation_seed" must be a whole number'),
        ('{"image": "a.png"}\n{"image": "a.png"}\n', "listed more than once"),
        ("\n\n", "no images to evaluate"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, content, message):
    _write_images(tmp_path, ["a.png"])
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_dataset(manifest)


def test_self_consistent_set_regenerates_references_from_known_prompts(stack, tmp_path):
    prompts = ["  ", "a bowl of lemons,  still life"]
    dataset = make_self_consistent_set(prompts, stack.text_to_image, tmp_path / "self", seed=5)

    assert [c.ground_truth for c in dataset.cases] == ["a bowl of lemons, still life"]
    assert {c.source for c in dataset.cases} == {"self"}
    assert [c.generation_seed for c in dataset.cases] == [5]  # read back from the manifest
    first = Image.open(dataset.cases[0].path)
    assert first.size == (stack.text_to_image.width, stack.text_to_image.height)
    again = stack.text_to_image.generate("a bowl of lemons, still life", 5)
    assert first.convert("RGB").tobytes() == again.tobytes()


def test_pez_runs_through_the_inversion_registry_with_its_trajectory(stack, reference):
    method = build_method("pez", _context(stack, RunConfig(models="tiny", refine="none", inversion_steps=2)))
    result = method.recover(reference, seed=0)

    assert method.seed_dependent is True
    assert result.search_seeds == [0]
    assert result.prompt.strip()
    assert [point["step"] for point in result.trajectory] == [0, 1]
    assert all(isinstance(point["loss"], float) for point in result.trajectory)
    assert result.cost.brain_calls == 0 and result.cost.wall_seconds > 0


def test_self_consistent_references_default_to_the_reference_seed_range(stack, tmp_path):
    from arpo.eval.seeds import REFERENCE_SEED_BASE, SeedPlan

    dataset = make_self_consistent_set(["a red barn", "a blue boat"], stack.text_to_image, tmp_path / "refs")
    seeds = [case.generation_seed for case in dataset.cases]
    assert seeds == [REFERENCE_SEED_BASE, REFERENCE_SEED_BASE + 1]
    plan = SeedPlan.default(3)
    assert not set(seeds) & {plan.search_seed, *plan.eval_seeds}
