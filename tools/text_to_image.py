"""Text-to-image generation over any diffusers pipeline, with the prompt-length facts the loop needs.

One `TextToImage` wraps one loaded pipeline. It knows how many prompt tokens the (first) text encoder
really sees, so the loop can score and show exactly that text, and it generates reproducible images
from a seed. Real weights load by Hugging Face id, preset key or local path; `TextToImage.tiny()`
builds a genuine pipeline of one real family (SD 1.5, SDXL or PixArt-α) from tiny random parts for
tests (see tools/tiny_pipelines.py).

Every generation runs on its own view of the pipeline with a fresh scheduler (tools/schedulers.py):
the shared `pipeline.scheduler` is a template that nothing ever steps. Where the pipeline's parts sit
between generations (on the accelerator, or in CPU memory under --low-vram) is its
`PipelinePlacement`'s business (tools/pipeline_placement.py).
"""

import copy
import inspect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ContextManager

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from arpo.core.errors import InvalidInputError
from arpo.tools.accelerator_turns import HOME, AcceleratorTurns, turns_on
from arpo.tools.devices import dtype_name, pick_device, pick_dtype
from arpo.tools.hub import is_local_path, load_or_fail
from arpo.tools.micro_batching import DEFAULT_WAIT_S, MicroBatcher
from arpo.tools.pipeline_placement import PipelinePlacement
from arpo.tools.schedulers import pipeline_view, replace_scheduler, scheduler_class, scheduler_name
from arpo.tools.text_encoder_cache import encodings_remembered, remember_encodings
from arpo.tools.tiny_pipelines import cast_like_loading, tiny_pipeline

PRESETS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "pixart": "PixArt-alpha/PixArt-XL-2-512x512",
}
# Denoising steps per preset: enough for a faithful image, few enough to iterate. PixArt's DPM-Solver
# default scheduler converges faster than the UNet pipelines' PNDM/Euler.
PRESET_STEPS = {"sd15": 30, "sdxl": 30, "pixart": 20}
DEFAULT_STEPS = 30
TINY_NAME = "tiny"
# Tiny presets and the real family each one mirrors (same pipeline, encoder and scheduler classes).
TINY_PRESETS = {"tiny": "sd15", "tiny-sdxl": "sdxl", "tiny-pixart": "pixart"}
TINY_STEPS = 2
_FALLBACK_IMAGE_SIDE = 512


TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
"""Where diffusers pipelines keep their text encoders (SDXL has two, PixArt its T5 as the first)."""

_REMEMBERED_PROMPTS = 1024
"""Prompts whose token spans (and token counts) a model keeps, most recently used first."""


@dataclass(frozen=True)
class Speedups:
    """Optional ways to make renders faster on an accelerator; both off by default."""

    compile: bool = False
    """torch.compile the denoiser (UNet or transformer) in place; its first call compiles."""
    channels_last: bool = False
    """Store the denoiser's and VAE's 4-D weights in channels-last order."""


class TextToImage:
    """A diffusers text-to-image pipeline with a fixed sampling recipe, safe to share between runs.

    Attributes: `name` (preset key's model id, hub id, path or "tiny"), `pipeline`, `steps`,
    `guidance_scale`, `height`, `width`, `placement` (where its parts sit, see
    tools/pipeline_placement.py; by default where the pipeline was put, for good), and two benchmark
    counters: `calls` (images generated) and `forward_seconds` (wall time spent inside the pipeline).
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        *,
        name: str,
        steps: int,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        revision: str | None = None,
        placement: PipelinePlacement | None = None,
    ):
        if getattr(pipeline, "tokenizer", None) is None:
            raise InvalidInputError(
                f"'{name}' loads as {type(pipeline).__name__}, which has no text tokenizer; "
                "arpo needs a text-to-image pipeline."
            )
        self.name = name
        self.pipeline = pipeline
        self.steps = steps
        self.guidance_scale = float(
            guidance_scale if guidance_scale is not None else _call_default(pipeline, "guidance_scale", 7.5)
        )
        default_height, default_width = _default_image_size(pipeline)
        self.height = height or default_height
        self.width = width or default_width
        self.revision = revision
        self.placement = placement or PipelinePlacement(pipeline, turns_on(pipeline.device))
        self.forward_seconds = 0.0
        self.calls = 0
        self.speedups = Speedups()
        self._generate_lock = threading.Lock()
        self._batcher: MicroBatcher | None = None
        """Set while `batching` is active: concurrent `generate` calls then run as one batch."""
        # A private tokenizer copy: fast tokenizers fail ("Already borrowed") when one thread counts
        # tokens while the pipeline's own call is changing truncation settings on the shared one.
        self._tokenizer = copy.deepcopy(pipeline.tokenizer)
        self._tokenizer_lock = threading.Lock()
        # Token spans by prompt: the loop counts and truncates the same prompts node after node.
        self._spans_by_prompt: OrderedDict[str, list] = OrderedDict()
        self._budget = _content_token_budget(pipeline, self._tokenizer)
        self._call_options = _fixed_call_options(pipeline)
        pipeline.set_progress_bar_config(disable=True)
        # The negative prompt of every render, and any prompt rendered again, is encoded once.
        self.remembered_encodings = [
            remember_encodings(encoder)
            for encoder in (getattr(pipeline, name, None) for name in TEXT_ENCODER_NAMES)
            if encoder is not None
        ]

    # ---- speed -----------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the sampler calls at every step: the UNet, or the transformer (PixArt)."""
        return getattr(self.pipeline, "unet", None) or self.pipeline.transformer

    def speed_up(self, speedups: Speedups) -> "TextToImage":
        """Apply `speedups` (once; later calls only add what is new) and return self.

        Images stay the same up to float rounding. `Module.compile()` keeps the module the same object,
        so everything that reads its config, dtype or device, or moves it (--low-vram), works as before;
        PH2P and EDITOR differentiate through the compiled denoiser, paying a second compilation.
        """
        if speedups.channels_last and not self.speedups.channels_last:
            for module in (self.denoiser, getattr(self.pipeline, "vae", None)):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if speedups.compile and not self.speedups.compile:
            self.denoiser.compile()
        self.speedups = Speedups(
            compile=speedups.compile or self.speedups.compile,
            channels_last=speedups.channels_last or self.speedups.channels_last,
        )
        return self

    # ---- prompt length ---------------------------------------------------------------------------

    def token_budget(self) -> int:
        """How many prompt tokens the first text encoder sees, start/end markers excluded (75 for CLIP)."""
        return self._budget

    def count_tokens(self, prompt: str) -> int:
        """Content tokens in `prompt` as the pipeline's tokenizer splits it, before any truncation."""
        return len(self._token_spans(prompt))

    def truncate(self, prompt: str) -> str:
        """The part of `prompt` the text encoder actually sees; `prompt` itself when it fits.

        The result is a prefix of the original text (its spelling and punctuation kept), cut after the
        last token that fits. When the budget ends inside a word the cut moves back to where the
        re-tokenized prefix fits again, because a word fragment is not something text can express.
        """
        spans = self._token_spans(prompt)
        if len(spans) <= self._budget:
            return prompt
        if spans[0] is None:  # slow tokenizer without offsets: decode the kept ids instead
            return self._decode_prefix(prompt)
        # Unigram tokenizers (T5) have single-letter pieces, so a word fragment can re-tokenize within
        # the budget: first look for a cut between words, and only for text without spaces (CJK) take
        # any cut that fits.
        for between_words_only in (True, False):
            for last_kept in range(self._budget - 1, -1, -1):
                end = spans[last_kept][1]
                if between_words_only and end < len(prompt) and prompt[end - 1 : end + 1].isalnum():
                    continue
                prefix = prompt[:end].rstrip()
                if self.count_tokens(prefix) <= self._budget:
                    return prefix
        return ""

    def _token_spans(self, prompt: str) -> list[tuple[int, int] | None]:
        """(start, end) character span of each content token; None entries when offsets are unknown."""
        with self._tokenizer_lock:
            known = self._spans_by_prompt.get(prompt)
            if known is not None:
                self._spans_by_prompt.move_to_end(prompt)
                return list(known)
            # Through the tokenizer's own call, never its backend directly: padding or truncation left
            # on a shared fast backend by an earlier padded call would otherwise change the count.
            if getattr(self._tokenizer, "is_fast", False):
                encoded = self._tokenizer(
                    prompt, add_special_tokens=False, padding=False, truncation=False, return_offsets_mapping=True,
                    verbose=False,  # counting a long prompt is the point, not a mistake to warn about
                )
                spans = [tuple(span) for span in encoded["offset_mapping"]]
            else:
                spans = [None] * len(self._tokenizer.encode(prompt, add_special_tokens=False))
            self._spans_by_prompt[prompt] = spans
            if len(self._spans_by_prompt) > _REMEMBERED_PROMPTS:
                self._spans_by_prompt.popitem(last=False)
            return list(spans)

    def _decode_prefix(self, prompt: str) -> str:
        with self._tokenizer_lock:
            kept = self._tokenizer.encode(prompt, add_special_tokens=False)[: self._budget]
            return self._tokenizer.decode(kept, skip_special_tokens=True).strip()

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, prompt: str, seed: int) -> Image.Image:
        """One RGB image for `prompt`; the same prompt and seed always give the same image.

        The noise comes from a CPU generator, which keeps a seed's image identical across devices.
        Each call denoises with a fresh scheduler on its own view of the pipeline, so no generation (and
        no optimiser stepping a scheduler elsewhere) sees another's scheduler state. Calls are still
        serialised, to keep one denoising loop's activations in memory at a time.
        """
        if self._batcher is not None:
            return self._batcher((prompt, int(seed)))
        return self.generate_many([(prompt, int(seed))])[0]

    def generate_many(self, requests: list[tuple[str, int]]) -> list[Image.Image]:
        """One image per (prompt, seed), in one batched pipeline call; each seed draws its own noise,
        so each image is the one `generate` makes for it (to float rounding in the batched forward)."""
        with self.placement.generation_turn(), self._generate_lock, encodings_remembered():
            generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for _, seed in requests]
            view = pipeline_view(self.pipeline)
            started = time.perf_counter()
            output = view(
                prompt=[prompt for prompt, _ in requests] if len(requests) > 1 else requests[0][0],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                height=self.height,
                width=self.width,
                generator=generators if len(generators) > 1 else generators[0],
                output_type="pil",
                **self._call_options,
            )
            self.forward_seconds += time.perf_counter() - started
            self.calls += len(requests)
        return [image.convert("RGB") for image in output.images]

    @contextmanager
    def batching(self, participants: Callable[[], int], wait_s: float = DEFAULT_WAIT_S) -> Iterator[MicroBatcher]:
        """While active, `generate` calls from several threads that come together run as one batch
        (`arpo batch --parallel`); `participants` says how many threads may join."""
        self._batcher = MicroBatcher(self.generate_many, participants, wait_s=wait_s)
        try:
            yield self._batcher
        finally:
            self._batcher = None

    def whole_pipeline_turn(self) -> ContextManager[None]:
        """While active every part of the pipeline is on its accelerator, ready to be differentiated
        through (PH2P, EDITOR); under --low-vram every other model waits in CPU memory meanwhile."""
        return self.placement.whole_turn()

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes (its parts may rest in CPU memory in between, see `placement`)."""
        return self.placement.turns.device if self.placement.low_vram else self.pipeline.device

    def describe(self) -> dict[str, Any]:
        """The sampling recipe and library versions, as plain JSON values, for the run record."""
        return {
            "model": self.name,
            "revision": self.revision,
            "pipeline": type(self.pipeline).__name__,
            "scheduler": scheduler_name(self.pipeline),
            "scheduler_class": type(self.pipeline.scheduler).__name__,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "token_budget": self._budget,
            "dtype": dtype_name(self.pipeline.dtype),
            "device": str(self.device),
            "low_vram": self.placement.low_vram,
            **asdict(self.speedups),
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
        }

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ) -> "TextToImage":
        """Load a pipeline by preset key (`PRESETS`), Hugging Face id or local folder.

        Only cached weights are used unless the hub is both allowed (no HF_HUB_OFFLINE) and reachable;
        otherwise this raises ModelUnavailableError at once. `scheduler` (a name from
        tools/schedulers.SCHEDULER_NAMES) replaces the checkpoint's own scheduler, keeping its noise
        schedule; None keeps the checkpoint's. `low_vram` leaves the pipeline in CPU memory, taking
        turns on `device` (`turns`: by default the device's own, shared by the process).
        """
        if scheduler is not None:
            scheduler_class(scheduler)  # a typo fails before gigabytes load
        model_id = PRESETS.get(name_or_path, name_or_path)
        torch_device = pick_device(device)
        torch_dtype = dtype or pick_dtype(torch_device)

        def load(local_files_only: bool) -> tuple[Path, DiffusionPipeline]:
            folder = _pipeline_folder(model_id, local_files_only)
            pipeline = DiffusionPipeline.from_pretrained(
                str(folder), **_dtype_argument(torch_dtype), **_safety_checker_off(folder)
            )
            return folder, pipeline

        folder, pipeline = load_or_fail(model_id, load)
        if not low_vram:
            pipeline.to(torch_device)
        if scheduler is not None:
            replace_scheduler(pipeline, scheduler)
        return cls(
            pipeline,
            name=model_id,
            steps=steps or PRESET_STEPS.get(name_or_path, DEFAULT_STEPS),
            guidance_scale=guidance_scale,
            revision=_snapshot_revision(folder),
            placement=PipelinePlacement(pipeline, turns or turns_on(torch_device), low_vram=low_vram),
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        family: str = "sd15",
        scheduler: str | None = None,
        dtype: torch.dtype | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ) -> "TextToImage":
        """A real pipeline of one family ("sd15", "sdxl", "pixart") made of tiny random parts.

        Its images (64x64, in milliseconds) are noise, but every code path (tokenizers, text encoders,
        denoiser, the family's own scheduler class, VAE) is the real one. The same `seed` always builds
        the same weights. `scheduler` swaps the scheduler as for real models; `dtype` casts the weights
        (float32 by default: tiny models run on the CPU). `low_vram` takes turns exactly as a real
        pipeline would, on the CPU (or on `turns`' device, which tests make a CPU device of their own).
        """
        pipeline = tiny_pipeline(family, seed)
        if dtype is not None:
            cast_like_loading(pipeline, dtype)
        if scheduler is not None:
            replace_scheduler(pipeline, scheduler)
        name = next(key for key, value in TINY_PRESETS.items() if value == family)
        placement = PipelinePlacement(pipeline, turns or turns_on(HOME), low_vram=low_vram)
        return cls(pipeline, name=name, steps=TINY_STEPS, placement=placement)


# ---- helpers: pretrained loading -----------------------------------------------------------------


def _pipeline_folder(model_id: str, local_files_only: bool) -> Path:
    """The folder holding the pipeline's files: the path itself, or the hub cache snapshot."""
    if is_local_path(model_id):
        return Path(model_id).expanduser()
    return Path(DiffusionPipeline.download(model_id, local_files_only=local_files_only))


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed `torch_dtype` to `dtype` (and warns on the old name); pass whichever it reads."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present since the rename
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _safety_checker_off(folder: Path) -> dict[str, Any]:
    """Leave out Stable Diffusion 1.x's NSFW checker when the pipeline has one.

    arpo generates images only to compare them with the reference. The checker replaces images it
    flags (often false positives on paintings and nudes in art history) with black squares, which would
    silently wreck the similarity scores the loop optimises, and it costs a second CLIP model's memory
    and time on every image. Passing `requires_safety_checker=False` records that this is deliberate and
    keeps diffusers from warning on every load.
    """
    model_index = folder / "model_index.json"
    if not model_index.is_file():
        return {}
    components = json.loads(model_index.read_text(encoding="utf-8"))
    if "safety_checker" not in components:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _snapshot_revision(folder: Path) -> str | None:
    """The commit hash of a hub-cache snapshot folder (…/snapshots/<commit>), or None for other folders."""
    return folder.name if folder.parent.name == "snapshots" else None


# ---- helpers: pipeline facts ---------------------------------------------------------------------


def _call_default(pipeline: DiffusionPipeline, parameter: str, fallback: Any = None) -> Any:
    """The default value of one `pipeline.__call__` parameter, or `fallback` if it has none."""
    parameters = inspect.signature(type(pipeline).__call__).parameters
    if parameter not in parameters or parameters[parameter].default is inspect.Parameter.empty:
        return fallback
    return parameters[parameter].default


def _fixed_call_options(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """Call arguments that keep a pipeline rendering exactly the prompt and size arpo asks for.

    PixArt-style pipelines would otherwise clean the caption (lower-casing it and stripping text, so
    the encoder reads something other than the prompt the loop counted, scored and shows) and snap
    the requested size to an aspect-ratio bin (arpo always asks for the model's native size, which
    is its own bin; tiny models have no bin at all).
    """
    parameters = inspect.signature(type(pipeline).__call__).parameters
    wanted = {"clean_caption": False, "use_resolution_binning": False}
    return {name: value for name, value in wanted.items() if name in parameters}


def _content_token_budget(pipeline: DiffusionPipeline, tokenizer: Any) -> int:
    """Content tokens the first text encoder sees.

    CLIP-conditioned pipelines (SD 1.x/2.x, SDXL, SD3, Flux) pad and truncate their first tokenizer to
    its `model_max_length` (77). Pipelines whose only text encoder is a T5-style model (PixArt) cut at
    the `max_sequence_length` argument of their call instead (120 for PixArt-α); pipelines with a
    second tokenizer apply that argument to the second one, not the first.
    """
    limit = int(tokenizer.model_max_length)
    sequence_limit = _call_default(pipeline, "max_sequence_length")
    if sequence_limit is not None and getattr(pipeline, "tokenizer_2", None) is None:
        limit = min(limit, int(sequence_limit))
    return limit - tokenizer.num_special_tokens_to_add(pair=False)


def _default_image_size(pipeline: DiffusionPipeline) -> tuple[int, int]:
    """The pipeline's native (height, width): its denoiser's sample size times the VAE scale factor."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    scale = getattr(pipeline, "vae_scale_factor", None)
    sample_size = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if sample_size is None or scale is None:
        return _FALLBACK_IMAGE_SIDE, _FALLBACK_IMAGE_SIDE
    if isinstance(sample_size, int):
        return sample_size * scale, sample_size * scale
    return sample_size[0] * scale, sample_size[1] * scale
