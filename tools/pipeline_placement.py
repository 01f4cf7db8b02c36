"""How a diffusers pipeline takes its turns on the accelerator: resident, or resting in CPU memory.

By default the whole pipeline is loaded onto the accelerator and stays there. With --low-vram it rests
in CPU memory and has two kinds of turn, because its two users need different things:

- generating an image: diffusers' model CPU offload (`enable_model_cpu_offload`, which needs
  accelerate and is told the device) moves one part at a time onto the accelerator as the call reaches
  it (text encoders, then the denoiser, then the VAE) and sends them all home when the call ends, so
  the pipeline's share of the accelerator is its largest part, not its sum;
- differentiating through it (PH2P, EDITOR): their backward pass runs through the text encoder after
  the UNet has run, which the offload hooks would already have sent home, so this turn removes the
  hooks and holds every part on the accelerator until it ends (diffusers' docs: models used outside
  the pipeline after the hooks are installed do not offload properly).

Low-VRAM mode also bounds the activations: the VAE decodes (and encodes) in tiles above its native
size, and attention is computed in slices where it would otherwise build the whole attention matrix.
With PyTorch's scaled-dot-product attention (every torch 2 pipeline's default) slicing is left off:
diffusers warns that slicing on top of it saves nothing and can be much slower, since SDPA's
memory-efficient kernels already avoid that matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager

import torch

from arpo.tools.accelerator_turns import HOME, AcceleratorTurns, Seat, Stay

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

GENERATION_SEAT = "text-to-image"
WHOLE_SEAT = "text-to-image (whole, for gradients)"


class PipelinePlacement:
    """The pipeline's seats in its device's turns: one for generating, one for differentiating."""

    def __init__(self, pipeline: DiffusionPipeline, turns: AcceleratorTurns, *, low_vram: bool = False):
        self.pipeline = pipeline
        self.turns = turns
        self.low_vram = low_vram
        stay = Stay.UNTIL_NEEDED if low_vram else Stay.RESIDENT
        self._generation = Seat(GENERATION_SEAT, stay=stay, bring=self._offload_each_part, send_home=self._all_home)
        self._whole = Seat(WHOLE_SEAT, stay=stay, bring=self._whole_on, send_home=self._all_home)
        if low_vram:
            self._all_home()
            _bound_activation_memory(pipeline)

    def generation_turn(self) -> ContextManager[None]:
        """While active the pipeline can generate on the accelerator (one part there at a time under
        --low-vram) and no other visiting model is there."""
        return self.turns.turn(self._generation)

    def whole_turn(self) -> ContextManager[None]:
        """While active every part of the pipeline is on the accelerator, with no offload hooks."""
        return self.turns.turn(self._whole)

    def describe(self) -> dict[str, object]:
        return {"device": str(self.turns.device), "low_vram": self.low_vram, "stay": self._generation.stay.value}

    def _offload_each_part(self, device: torch.device) -> None:
        if not _has_offload_hooks(self.pipeline):
            self.pipeline.enable_model_cpu_offload(device=device)  # also moves every part home first

    def _whole_on(self, device: torch.device) -> None:
        self.pipeline.remove_all_hooks()
        for part in _parts(self.pipeline):
            part.to(device)

    def _all_home(self) -> None:
        # Part by part rather than `pipeline.to`, which would warn about half precision on the CPU:
        # the parts only rest there, they never run there.
        for part in _parts(self.pipeline):
            part.to(HOME)


def _parts(pipeline: DiffusionPipeline) -> list[torch.nn.Module]:
    return [part for part in pipeline.components.values() if isinstance(part, torch.nn.Module)]


def _has_offload_hooks(pipeline: DiffusionPipeline) -> bool:
    """Whether diffusers' model offload hooks are installed; read from the parts themselves, since a
    generation on a shallow copy of the pipeline (tools/schedulers.pipeline_view) re-installs them
    through the copy and leaves the original's list of hooks stale."""
    from accelerate.hooks import CpuOffload

    return any(isinstance(getattr(part, "_hf_hook", None), CpuOffload) for part in _parts(pipeline))


def _bound_activation_memory(pipeline: DiffusionPipeline) -> None:
    """VAE tiling, and attention slicing where attention does not already run through SDPA."""
    vae = getattr(pipeline, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()  # the pipeline-level enable_vae_tiling is deprecated in favour of this
    if _builds_attention_matrices(pipeline):
        pipeline.enable_attention_slicing()


def _builds_attention_matrices(pipeline: DiffusionPipeline) -> bool:
    """Whether the denoiser has attention processors that materialise the attention matrix (diffusers'
    classic `AttnProcessor`), the case attention slicing was made for."""
    from diffusers.models.attention_processor import AttnProcessor

    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    processors = getattr(denoiser, "attn_processors", None) or {}
    return any(type(processor) is AttnProcessor for processor in processors.values())
