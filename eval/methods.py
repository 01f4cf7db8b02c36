"""The prompt-recovery methods an evaluation compares, behind one small interface.

Each method takes a reference image and a search seed and returns a prompt with what it cost (wall
time, text-to-image calls, brain calls and tokens) and the seeds it rendered or sampled with while
searching (`search_seeds`), so the runner can prove its evaluation seeds are not among them. Methods
are named on the command line:

| name | what it does |
| --- | --- |
| `caption` | the stack's captioner alone (BLIP-2 for real stacks) |
| `vlm-caption` | the VLM brain asked once to write a prompt (agents/prompt_writer.py) |
| `ci-fast`, `ci-classic`, `ci-best` | the `clip-interrogator` package's modes, on the stack's CLIP and captioner |
| `pez`, `ph2p`, `editor`, `regressor` | an inversion method from `arpo.tools.inverters` |
| `arpo-vanilla`, `arpo-enhanced` | the ARPO loop with the configured brains; `arpo-vanilla:offline` (or `:vllm`, `:openai`) picks the backend of both brains |
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from arpo.core.errors import InvalidInputError
from arpo.tools.inverters import INVERSION_METHODS, build_inverter

if TYPE_CHECKING:
    from arpo.agents.brain import Brain
    from arpo.core.run_config import BrainChoice, RunConfig
    from arpo.storage.history import History
    from arpo.tools.model_stack import ModelStack
    from arpo.tools.reference_image import ReferenceImage

INTERROGATOR_MODES = {"ci-fast": "fast", "ci-classic": "classic", "ci-best": "best"}
ARPO_FRAMEWORKS = {"arpo-vanilla": "vanilla", "arpo-enhanced": "enhanced"}
BRAIN_PROVIDERS = ("openai", "vllm", "offline")
SIMPLE_METHODS = ("caption", "vlm-caption")


@dataclass
class MethodCost:
    """What recovering one prompt cost; methods are compared at equal compute by these."""

    wall_seconds: float = 0.0
    t2i_calls: int = 0
    brain_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RecoveredPrompt:
    """A method's answer for one reference image and seed."""

    prompt: str
    cost: MethodCost
    run_id: str | None = None
    """The history run of an ARPO method (kind "eval")."""
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    """Per iteration or step: scores along the way ({"step", "clip_i", "clip_t"} or {"step", "loss"})."""
    details: dict[str, Any] = field(default_factory=dict)
    search_seeds: list[int] = field(default_factory=list)
    """Every seed the method rendered or sampled noise with while choosing the prompt; empty for
    methods that render nothing (caption, VLM caption, CLIP-Interrogator)."""


RunStarted = Callable[[str], None]
"""Told the run id as soon as a method has created a history run, so an interrupted cell can resume it."""


class PromptMethod(Protocol):
    """One way of recovering a prompt from an image."""

    name: str
    seed_dependent: bool
    """False when the method returns the same prompt for every seed (it searches nothing)."""

    def recover(
        self,
        reference: ReferenceImage,
        seed: int,
        *,
        resume_run_id: str | None = None,
        on_run_started: RunStarted | None = None,
    ) -> RecoveredPrompt: ...


@dataclass
class MethodContext:
    """What building methods needs: the models, the history, and the run settings from the CLI."""

    models: ModelStack
    history: History
    base_config: RunConfig
    """Models, brains, steps and seed defaults the ARPO methods and the VLM caption start from."""
    interrogator_data: Path | None = None
    """Folder of clip-interrogator phrase lists (None: the package's own, about 106k phrases)."""
    interrogator_max_flavors: int | None = None
    """Most phrases the fast and best modes add to the caption (None: the package's 32)."""

    @cached_property
    def interrogator(self) -> Any:
        """One clip-interrogator for every mode (its phrase embeddings are the costly part)."""
        return _build_interrogator(self)


def validate_method_names(names: list[str]) -> list[str]:
    """Check names before any model is loaded; returns them without duplicates, in order."""
    if not names:
        raise InvalidInputError("no methods given; e.g. --methods caption,ci-fast,arpo-vanilla")
    for name in names:
        base, _, provider = name.partition(":")
        if base not in all_method_names():
            raise InvalidInputError(f"unknown method {name!r}; choose from {', '.join(all_method_names())}")
        if provider and (base not in ARPO_FRAMEWORKS or provider not in BRAIN_PROVIDERS):
            raise InvalidInputError(f"method {name!r}: only arpo-* methods take :openai, :vllm or :offline")
        if ARPO_FRAMEWORKS.get(base) == "enhanced" and provider == "offline":
            # The enhanced framework's VLM describes both images; the offline brain cannot, and the run
            # would refuse only after the models had loaded.
            raise InvalidInputError(f"method {name!r}: the enhanced framework needs a describing VLM; "
                                    "use arpo-enhanced:openai or :vllm, or arpo-vanilla:offline")
    return list(dict.fromkeys(names))


def all_method_names() -> list[str]:
    return [*SIMPLE_METHODS, *INTERROGATOR_MODES, *INVERSION_METHODS, *ARPO_FRAMEWORKS]


def build_method(name: str, context: MethodContext) -> PromptMethod:
    """The method called `name` (see the module docstring), sharing the context's models."""
    base, _, provider = name.partition(":")
    if base == "caption":
        return CaptionMethod(context.models)
    if base == "vlm-caption":
        return VlmCaptionMethod(_vlm_brain(context.base_config), context.models)
    if base in INTERROGATOR_MODES:
        return InterrogatorMethod(name, INTERROGATOR_MODES[base], context)
    if base in INVERSION_METHODS:
        return InversionMethod(name, context)
    if base in ARPO_FRAMEWORKS:
        return ArpoMethod(name, ARPO_FRAMEWORKS[base], provider or None, context)
    raise InvalidInputError(f"unknown method {name!r}")


class _Clock:
    """Wall time and text-to-image calls spent between start and `cost()`."""

    def __init__(self, models: ModelStack) -> None:
        self.models = models
        self.started = time.perf_counter()
        self.t2i_before = models.text_to_image.calls

    def cost(self, **brain: int) -> MethodCost:
        return MethodCost(
            wall_seconds=time.perf_counter() - self.started,
            t2i_calls=self.models.text_to_image.calls - self.t2i_before,
            **brain,
        )


class CaptionMethod:
    """The captioner's caption as the prompt (the usual P0 of the loop)."""

    seed_dependent = False

    def __init__(self, models: ModelStack) -> None:
        self.name = "caption"
        self.models = models

    def recover(self, reference: ReferenceImage, seed: int, **_: Any) -> RecoveredPrompt:
        clock = _Clock(self.models)
        prompt = self.models.captioner.caption(reference.image)
        return RecoveredPrompt(prompt, clock.cost(), details={"captioner": self.models.captioner.name})


class VlmCaptionMethod:
    """One VLM call asking for a prompt (agents/prompt_writer.py)."""

    seed_dependent = False

    def __init__(self, brain: Brain, models: ModelStack) -> None:
        from arpo.agents.prompt_writer import PromptWriter

        self.name = "vlm-caption"
        self.writer = PromptWriter(brain)
        self.brain = brain
        self.models = models

    def recover(self, reference: ReferenceImage, seed: int, **_: Any) -> RecoveredPrompt:
        clock = _Clock(self.models)
        self.brain.take_calls()  # whatever came before is not this prompt's cost
        try:
            prompt = self.writer.write(reference.image)
        finally:
            calls = self.brain.take_calls()
        cost = clock.cost(
            brain_calls=len(calls),
            prompt_tokens=sum(call.prompt_tokens or 0 for call in calls),
            completion_tokens=sum(call.completion_tokens or 0 for call in calls),
        )
        return RecoveredPrompt(prompt, cost, details={"vlm": self.brain.model})


def _vlm_brain(config: RunConfig) -> Brain:
    from arpo.agents.brains import build_brains, tuning_of

    if config.vlm.provider == "offline":
        raise InvalidInputError("method vlm-caption needs a VLM brain; set --brain or --vlm-brain to openai or vllm")
    brains = build_brains(config.vlm.provider, "offline", vlm_model=config.vlm.model, vlm_base_url=config.vlm.base_url,
                          vlm_options=tuning_of(config.vlm))
    return brains.vlm


class InterrogatorMethod:
    """clip-interrogator's fast, classic or best mode, with the stack's CLIP and its captioner's caption.

    The package's own caption model is switched off; our captioner's caption is handed in, so the
    comparison with `caption` isolates what the phrase banks add. Phrase embeddings are cached under
    $ARPO_HOME/cache/clip-interrogator and never downloaded.
    """

    seed_dependent = False

    def __init__(self, name: str, mode: str, context: MethodContext) -> None:
        self.name = name
        self.mode = mode
        self.context = context

    def recover(self, reference: ReferenceImage, seed: int, **_: Any) -> RecoveredPrompt:
        models = self.context.models
        clock = _Clock(models)
        interrogator = self.context.interrogator
        caption = models.captioner.caption(reference.image)
        image = reference.image.convert("RGB")
        limit = self.context.interrogator_max_flavors
        flavors = {"max_flavors": limit} if limit is not None else {}
        if self.mode == "fast":
            prompt = interrogator.interrogate_fast(image, caption=caption, **flavors)
        elif self.mode == "classic":
            prompt = interrogator.interrogate_classic(image, caption=caption)
        else:
            prompt = interrogator.interrogate(image, caption=caption, min_flavors=min(8, limit or 8), **flavors)
        return RecoveredPrompt(prompt, clock.cost(), details={"mode": self.mode, "caption": caption})

def _build_interrogator(context: MethodContext) -> Any:
    import open_clip
    from clip_interrogator import Config, Interrogator

    from arpo.tools.cache_paths import cache_dir

    clip = context.models.clip
    architecture = clip.describe().get("model") or "ViT-L-14"
    if architecture == "tiny" or architecture.startswith(("hf-hub:", "local-dir:")):
        architecture = "ViT-L-14"  # only picks open_clip's tokenizer; the tiny CLIP uses the same BPE
    tag = clip.name.replace("/", "_")
    config = Config(
        clip_model_name=f"{architecture}/{tag}",
        caption_model_name=None,
        cache_path=str(cache_dir("clip-interrogator")),
        download_cache=False,
        device=str(clip.device),
        quiet=True,
    )
    config.clip_model = clip.model
    config.clip_preprocess = clip.preprocess
    if context.interrogator_data is not None:
        config.data_path = str(context.interrogator_data)
    if open_clip.get_model_config(architecture) is None:
        raise InvalidInputError(f"clip-interrogator cannot tokenize for CLIP {clip.name!r}")
    return Interrogator(config)


class InversionMethod:
    """PEZ, PH2P, EDITOR or the regressor, built by the inversion registry from the run settings."""

    seed_dependent = True

    def __init__(self, name: str, context: MethodContext) -> None:
        self.name = name
        self.context = context
        # The registry gives the inverter the run settings' step and time budget as its default.
        self.inverter = build_inverter(name, context.base_config)

    def recover(self, reference: ReferenceImage, seed: int, **_: Any) -> RecoveredPrompt:
        clock = _Clock(self.context.models)
        result = self.inverter.invert(reference.image, self.context.models, seed=seed)
        trajectory = [{"step": step.step, "loss": step.loss} for step in result.steps if step.loss is not None]
        details = {"score": result.score, **_plain(result.details)}
        # Inverters draw their noise (and render, where they do) with this one seed only.
        return RecoveredPrompt(result.prompt, clock.cost(), trajectory=trajectory, details=details, search_seeds=[seed])


class ArpoMethod:
    """The ARPO loop through graphs/invocation.py, one history run (kind "eval") per image and seed."""

    seed_dependent = True

    def __init__(self, name: str, framework: str, provider: str | None, context: MethodContext) -> None:
        self.name = name
        self.framework = framework
        self.provider = provider
        self.context = context
        # The `--init` inverter of the first run, reused by the next (a regressor loads once per method).
        self._initial_inverter: Any = None

    def run_config(self, seed: int) -> RunConfig:
        base = self.context.base_config
        update: dict[str, Any] = {"framework": self.framework, "seed": seed, "method": "arpo"}
        if self.provider is not None:
            update["vlm"] = _with_provider(base.vlm, self.provider)
            update["llm"] = _with_provider(base.llm, self.provider)
        return base.model_copy(update=update)

    def recover(
        self,
        reference: ReferenceImage,
        seed: int,
        *,
        resume_run_id: str | None = None,
        on_run_started: RunStarted | None = None,
    ) -> RecoveredPrompt:
        from arpo.graphs.invocation import build_context, execute_run, load_run, shareable_initial_inverter, start_run

        history = self.context.history
        clock = _Clock(self.context.models)
        shared = self._initial_inverter
        if resume_run_id is not None:
            handle = load_run(history, resume_run_id, models=self.context.models, initial_inverter=shared)
        else:
            config = self.run_config(seed)
            run_context = build_context(config, history, models=self.context.models, initial_inverter=shared)
            handle = start_run(history, config, reference, run_context, kind="eval")
            if on_run_started is not None:
                on_run_started(handle.run_id)
        self._initial_inverter = shareable_initial_inverter(handle.config, handle.context)
        execute_run(handle)
        detail = history.get_run(handle.run_id)
        iterations = detail.iterations_detail
        cost = clock.cost(
            brain_calls=detail.brain_calls,
            prompt_tokens=detail.prompt_tokens,
            completion_tokens=detail.completion_tokens,
        )
        # Every iteration generated exactly one image; counting them also covers a resumed run's
        # iterations made by an earlier process.
        cost.t2i_calls = len(iterations)
        trajectory = [{"step": it.index, "clip_i": it.clip_i, "clip_t": it.clip_t} for it in iterations]
        prompt = detail.best_prompt or detail.last_prompt or (iterations[-1].prompt if iterations else "")
        details = {"stopped_because": detail.stopped_because, "framework": self.framework,
                   "brains": {"vlm": handle.config.vlm.provider, "llm": handle.config.llm.provider}}
        # The loop renders every iteration (and its initial prompt) with the run's one seed.
        return RecoveredPrompt(prompt, cost, run_id=handle.run_id, trajectory=trajectory, details=details,
                               search_seeds=[handle.config.seed])


def _with_provider(choice: BrainChoice, provider: str) -> BrainChoice:
    if provider == choice.provider:
        return choice
    return choice.model_copy(update={"provider": provider, "model": None, "base_url": None if provider != "vllm" else choice.base_url})


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Only the JSON-friendly scalar and list values of a method's details."""
    return {key: value for key, value in values.items() if isinstance(value, (str, int, float, bool, list, type(None)))}
