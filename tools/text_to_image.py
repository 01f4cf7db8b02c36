"""Text-to-image generation over any diffusers pipeline, with the prompt-length facts the loop needs.

One `TextToImage` wraps one loaded pipeline. It knows how many prompt tokens the (first) text encoder
really sees, so the loop can score and show exactly that text, and it generates reproducible images
from a seed. Real weights load by Hugging Face id, preset key or local path; `TextToImage.tiny()`
builds a genuine StableDiffusionPipeline from tiny random parts for tests.
"""

import copy
import inspect
import json
import threading
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from arpo.errors import InvalidInputError
from arpo.tools.clip_tokenizer import offline_clip_tokenizer
from arpo.tools.devices import pick_device, pick_dtype
from arpo.tools.hub import is_local_path, load_or_fail

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
TINY_STEPS = 2
_FALLBACK_IMAGE_SIDE = 512


class TextToImage:
    """A diffusers text-to-image pipeline with a fixed sampling recipe, safe to share between runs.

    Attributes: `name` (preset key's model id, hub id, path or "tiny"), `pipeline`, `steps`,
    `guidance_scale`, `height`, `width`, and two benchmark counters: `calls` (images generated) and
    `forward_seconds` (wall time spent inside the pipeline).
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
        self.forward_seconds = 0.0
        self.calls = 0
        self._generate_lock = threading.Lock()
        # A private tokenizer copy: fast tokenizers fail ("Already borrowed") when one thread counts
        # tokens while the pipeline's own call is changing truncation settings on the shared one.
        self._tokenizer = copy.deepcopy(pipeline.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._budget = _content_token_budget(pipeline, self._tokenizer)
        pipeline.set_progress_bar_config(disable=True)

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
        for last_kept in range(self._budget - 1, -1, -1):
            prefix = prompt[: spans[last_kept][1]].rstrip()
            if self.count_tokens(prefix) <= self._budget:
                return prefix
        return ""

    def _token_spans(self, prompt: str) -> list[tuple[int, int] | None]:
        """(start, end) character span of each content token; None entries when offsets are unknown."""
        with self._tokenizer_lock:
            # Through the tokenizer's own call, never its backend directly: padding or truncation left
            # on a shared fast backend by an earlier padded call would otherwise change the count.
            if getattr(self._tokenizer, "is_fast", False):
                encoded = self._tokenizer(
                    prompt, add_special_tokens=False, padding=False, truncation=False, return_offsets_mapping=True,
                    verbose=False,  # counting a long prompt is the point, not a mistake to warn about
                )
                return [tuple(span) for span in encoded["offset_mapping"]]
            return [None] * len(self._tokenizer.encode(prompt, add_special_tokens=False))

    def _decode_prefix(self, prompt: str) -> str:
        with self._tokenizer_lock:
            kept = self._tokenizer.encode(prompt, add_special_tokens=False)[: self._budget]
            return self._tokenizer.decode(kept, skip_special_tokens=True).strip()

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, prompt: str, seed: int) -> Image.Image:
        """One RGB image for `prompt`; the same prompt and seed always give the same image.

        The noise comes from a CPU generator, which keeps a seed's image identical across devices.
        Calls are serialised: one pipeline cannot run two denoising loops at once.
        """
        with self._generate_lock:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            started = time.perf_counter()
            output = self.pipeline(
                prompt=prompt,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                height=self.height,
                width=self.width,
                generator=generator,
                output_type="pil",
            )
            self.forward_seconds += time.perf_counter() - started
            self.calls += 1
        return output.images[0].convert("RGB")

    def describe(self) -> dict[str, Any]:
        """The sampling recipe and library versions, as plain JSON values, for the run record."""
        return {
            "model": self.name,
            "revision": self.revision,
            "pipeline": type(self.pipeline).__name__,
            "scheduler": type(self.pipeline.scheduler).__name__,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "token_budget": self._budget,
            "dtype": str(self.pipeline.dtype).removeprefix("torch."),
            "device": str(self.pipeline.device),
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
    ) -> "TextToImage":
        """Load a pipeline by preset key (`PRESETS`), Hugging Face id or local folder.

        Only cached weights are used unless the hub is both allowed (no HF_HUB_OFFLINE) and reachable;
        otherwise this raises ModelUnavailableError at once.
        """
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
        pipeline.to(torch_device)
        return cls(
            pipeline,
            name=model_id,
            steps=steps or PRESET_STEPS.get(name_or_path, DEFAULT_STEPS),
            guidance_scale=guidance_scale,
            revision=_snapshot_revision(folder),
        )

    @classmethod
    def tiny(cls, seed: int = 0) -> "TextToImage":
        """A real StableDiffusionPipeline made of tiny random parts: 64x64 images in milliseconds.

        Its images are noise, but every code path (tokenizer, text encoder, UNet, scheduler, VAE) is
        the real one. The same `seed` always builds the same weights.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipeline = StableDiffusionPipeline(
                vae=_tiny_vae(),
                text_encoder=_tiny_text_encoder(),
                tokenizer=offline_clip_tokenizer(),
                unet=_tiny_unet(),
                scheduler=_tiny_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                image_encoder=None,
                requires_safety_checker=False,
            )
        pipeline.to("cpu")
        return cls(pipeline, name=TINY_NAME, steps=TINY_STEPS)


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


# ---- helpers: tiny random parts (shaped after diffusers' own pipeline tests) ---------------------

_TINY_TEXT_WIDTH = 32


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TINY_TEXT_WIDTH,
        attention_head_dim=2,
    )


def _tiny_vae() -> AutoencoderKL:
    # Two blocks give a scale factor of 2, so the UNet's 32x32 latents decode to 64x64 images.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _tiny_text_encoder() -> CLIPTextModel:
    # Real CLIP vocabulary and context so the offline tokenizer's ids and 77-token padding fit as-is.
    config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=_TINY_TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=_TINY_TEXT_WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def _tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
