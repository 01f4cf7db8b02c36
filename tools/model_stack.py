"""The three models one ARPO run needs (generator, CLIP scorer, captioner), chosen by name together.

Built with `low_vram`, the three rest in CPU memory and take turns on the accelerator, one at a time
(tools/accelerator_turns.py); otherwise the generator and the scorer live there and only the captioner
visits.
"""

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from arpo.tools.accelerator_turns import AcceleratorTurns
from arpo.tools.captioner import DEFAULT_CAPTIONER, Captioner
from arpo.tools.clip_scorer import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, ClipScorer, parse_clip_spec
from arpo.tools.devices import parse_dtype
from arpo.tools.text_to_image import TINY_PRESETS, Speedups, TextToImage

if TYPE_CHECKING:
    from arpo.core.run_config import RunConfig

TINY = "tiny"
DEFAULT_CLIP_SPEC = f"{DEFAULT_CLIP_MODEL}/{DEFAULT_CLIP_WEIGHTS}"


RENDER_WAIT_S = 0.05
"""How long a render waits for other items' renders to join its batch (a render takes far longer)."""
ENCODE_WAIT_S = 0.002
"""How long a CLIP encoding waits for others: selection encodes round after round, so only calls that
truly come together are worth joining."""


@dataclass
class ModelStack:
    """A text-to-image model, a CLIP scorer and a captioner, loaded once and shared by runs.

    `is_tiny` is True when any part is a tiny random model: the loop still runs end to end, but the
    prompts it recovers mean nothing, and the CLI says so. `low_vram`: its models take turns on the
    accelerator (`turns`, the text-to-image model's device's) instead of living there.
    """

    name: str
    text_to_image: TextToImage
    clip: ClipScorer
    captioner: Captioner
    is_tiny: bool
    low_vram: bool = False

    @property
    def turns(self) -> AcceleratorTurns:
        return self.text_to_image.placement.turns

    @contextmanager
    def batched_forwards(self, participants: Callable[[], int]) -> Iterator[None]:
        """While active, renders and CLIP encodings that several threads ask for at about the same time
        run as one batched call each (`arpo batch --parallel`); `participants` says how many may join."""
        with self.text_to_image.batching(participants, RENDER_WAIT_S), self.clip.batching(participants, ENCODE_WAIT_S):
            yield

    def describe(self) -> dict[str, Any]:
        """Every model's description, as plain JSON values, for the run record."""
        return {
            "name": self.name,
            "is_tiny": self.is_tiny,
            "low_vram": self.low_vram,
            "text_to_image": self.text_to_image.describe(),
            "clip": self.clip.describe(),
            "captioner": self.captioner.describe(),
        }


def build_model_stack(
    models: str = "sd15",
    *,
    clip_model: str | None = None,
    captioner: str | None = None,
    device: str | None = None,
    scheduler: str | None = None,
    dtype: str | None = None,
    low_vram: bool = False,
    turns: AcceleratorTurns | None = None,
    speedups: Speedups | None = None,
) -> ModelStack:
    """Load the models for a run.

    `models` is a tiny preset ("tiny" shaped like SD 1.5, "tiny-sdxl", "tiny-pixart": all three
    models tiny and random, for tests and demos), a preset ("sd15", "sdxl", "pixart"), a diffusers id
    or a local folder. The scorer defaults to CLIP ViT-L-14/openai and the captioner to BLIP-2
    (OPT-2.7b) for real models, to their tiny versions for tiny presets; either can be named
    explicitly ("tiny" works for each on its own). `clip_model` reads "MODEL/TAG", "MODEL",
    "hf-hub:org/repo" or "local-dir:/path". `scheduler` (tools/schedulers.SCHEDULER_NAMES) replaces
    the text-to-image model's own scheduler. `dtype` ("float32", "float16", "bfloat16") is the
    precision all three models load in; None means float16 on CUDA and float32 elsewhere (tiny models
    always run on the CPU, so float32). `low_vram` keeps all three in CPU memory, taking turns on the
    device one at a time; `turns` are those turns (by default each model's device's own, shared by the
    process; tests give one CPU device of their own to all three, to see the order of moves).
    `speedups` are applied to the text-to-image model (`TextToImage.speed_up`).
    """
    is_tiny_default = models in TINY_PRESETS
    clip_choice = clip_model or (TINY if is_tiny_default else DEFAULT_CLIP_SPEC)
    captioner_choice = captioner or (TINY if is_tiny_default else DEFAULT_CAPTIONER)
    torch_dtype = parse_dtype(dtype) if dtype else None  # an unknown name fails before anything loads

    gc.unfreeze()  # an earlier stack's objects become collectable again, should it be dropped
    placement = {"low_vram": low_vram, "turns": turns}
    stack = ModelStack(
        name=models,
        text_to_image=load_text_to_image(models, device, scheduler=scheduler, dtype=torch_dtype, **placement).speed_up(
            speedups or Speedups()
        ),
        clip=_load_clip(clip_choice, device, torch_dtype, placement),
        captioner=_load_captioner(captioner_choice, device, torch_dtype, placement),
        is_tiny=is_tiny_default or TINY in (clip_choice, captioner_choice),
        low_vram=low_vram,
    )
    _settle_long_lived_objects()
    return stack


def _settle_long_lived_objects() -> None:
    """Collect the loading's garbage once, then move every surviving object out of the collector's sight.

    Models, their libraries and the imported code are some 700k Python objects that live as long as the
    process; without this, every full collection walks them all, pausing a run for 0.1-0.4 s at moments
    nobody chose (measured in the loop benchmark: one run in five took 0.34 s of framework time instead
    of 0.07). Frozen objects are still freed when nothing refers to them; only reference cycles among
    them wait until the next stack is built, which thaws them first.
    """
    gc.collect()
    gc.freeze()


def model_stack_for(config: "RunConfig") -> ModelStack:
    """The model stack a run configuration names (models, scorer, captioner, device, scheduler, dtype,
    low-VRAM placement)."""
    return build_model_stack(
        config.models,
        clip_model=config.clip_model,
        captioner=config.captioner,
        device=config.device,
        scheduler=config.scheduler,
        dtype=config.dtype,
        low_vram=config.low_vram,
        speedups=Speedups(compile=config.compile, channels_last=config.channels_last),
    )


def model_stack_key(config: "RunConfig") -> tuple:
    """What two configurations must share to share one loaded model stack."""
    return (
        config.models, config.clip_model, config.captioner, config.device, config.scheduler, config.dtype,
        config.low_vram, config.compile, config.channels_last,
    )


def load_text_to_image(
    choice: str,
    device: str | None = None,
    *,
    scheduler: str | None = None,
    dtype: torch.dtype | str | None = None,
    low_vram: bool = False,
    turns: AcceleratorTurns | None = None,
) -> TextToImage:
    """The text-to-image model alone: a tiny preset, a preset, a diffusers id or a local folder."""
    torch_dtype = parse_dtype(dtype) if dtype else None
    placement = {"low_vram": low_vram, "turns": turns}
    if choice in TINY_PRESETS:
        return TextToImage.tiny(family=TINY_PRESETS[choice], scheduler=scheduler, dtype=torch_dtype, **placement)
    return TextToImage.from_pretrained(choice, device=device, scheduler=scheduler, dtype=torch_dtype, **placement)


def _load_captioner(choice: str, device: str | None, dtype: torch.dtype | None, placement: dict) -> Captioner:
    if choice == TINY:
        return Captioner.tiny(dtype=dtype, **placement)
    return Captioner.from_pretrained(choice, device=device, dtype=dtype, **placement)


def _load_clip(choice: str, device: str | None, dtype: torch.dtype | None, placement: dict) -> ClipScorer:
    if choice == TINY:
        return ClipScorer.tiny(dtype=dtype, **placement)
    model, pretrained = parse_clip_spec(choice)
    return ClipScorer.from_pretrained(model, pretrained, device=device, dtype=dtype, **placement)
