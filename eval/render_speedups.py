"""What each render speed-up buys, one on top of the other, on one text-to-image model.

Used by `python -m arpo.eval.real_shape_benchmark --speedups attention channels-last compile`. The
settings are measured in a fixed order, each added to the ones before, because `torch.compile` and
channels-last change the model in place and a fresh SD 1.5 per setting would cost more than the
measurement:

1. `attention`: diffusers' classic attention (explicit softmax(QK^T)V) and then PyTorch's
   scaled-dot-product attention, which diffusers uses by default wherever PyTorch has it;
2. `channels-last`: the denoiser's and VAE's weights in channels-last memory order;
3. `compile`: `torch.compile` of the denoiser; its first render, which compiles, is reported apart.

Each setting renders once to warm up, then `renders` times; the median is its `render_s`. The text-
encoder memory (tools/text_encoder_cache.py) is on throughout; each render has a new prompt, as in the
loop, so what the memory answers is the empty negative prompt: it saves
`text_encodings_remembered_per_render` forwards of `text_encoder_forward_s` each.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

SPEEDUP_STEPS = ("attention", "channels-last", "compile")
PROMPT = "a photograph of a cat sitting on a wooden table, soft window light"


def time_speedups(text_to_image, steps: tuple[str, ...], renders: int = 2) -> dict[str, Any]:
    """Median render seconds after each requested step (in SPEEDUP_STEPS order), plus what the
    text-encoder memory saves per render."""
    from arpo.tools.text_to_image import Speedups

    wanted = [step for step in SPEEDUP_STEPS if step in steps]
    memory, calls_before = text_to_image.remembered_encodings[0], text_to_image.calls
    hits_before = memory.hits
    render_s: dict[str, float] = {}
    figures: dict[str, Any] = {}
    if "attention" in wanted:
        _use_classic_attention(text_to_image)
        render_s["classic-attention"] = _median_render(text_to_image, renders)
        _use_default_attention(text_to_image)
    render_s["default"] = _median_render(text_to_image, renders)
    if "channels-last" in wanted:
        text_to_image.speed_up(Speedups(channels_last=True))
        render_s["+channels-last"] = _median_render(text_to_image, renders)
    if "compile" in wanted:
        text_to_image.speed_up(Speedups(compile=True))  # added to what is on already
        figures["compile_first_render_s"] = round(_render_seconds(text_to_image), 3)
        render_s["+compile"] = _median_render(text_to_image, renders)
    figures["render_s_by_speedup"] = {name: round(seconds, 3) for name, seconds in render_s.items()}
    renders_made = max(1, text_to_image.calls - calls_before)
    figures |= _text_encoder_forward(text_to_image)
    figures["text_encodings_remembered_per_render"] = round((memory.hits - hits_before) / renders_made, 2)
    return figures


def _median_render(text_to_image, renders: int) -> float:
    _render_seconds(text_to_image)  # warm-up: lazy set-up, and the allocator's first sizes
    return statistics.median(_render_seconds(text_to_image) for _ in range(max(1, renders)))


_takes = itertools.count()


def _render_seconds(text_to_image) -> float:
    import torch

    take = next(_takes)
    started = time.perf_counter()
    text_to_image.generate(f"{PROMPT}, take {take}", take)  # a new prompt each render, as in the loop
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _use_classic_attention(text_to_image) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    text_to_image.denoiser.set_attn_processor(AttnProcessor())


def _use_default_attention(text_to_image) -> None:
    """Back to scaled-dot-product attention, the processor a freshly built model has wherever PyTorch
    offers it (`set_default_attn_processor` would pick the classic one)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    text_to_image.denoiser.set_attn_processor(AttnProcessor2_0())


def _text_encoder_forward(text_to_image) -> dict[str, Any]:
    """Seconds of one text-encoder forward on the empty prompt: what the memory saves each time it
    answers instead."""
    import torch

    pipeline = text_to_image.pipeline
    ids = pipeline.tokenizer([""], padding="max_length", truncation=True, return_tensors="pt").input_ids
    encoder = pipeline.text_encoder
    with torch.no_grad():
        encoder(ids.to(encoder.device))  # warm-up
        started = time.perf_counter()
        encoder(ids.to(encoder.device))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return {"text_encoder_forward_s": round(time.perf_counter() - started, 4)}
