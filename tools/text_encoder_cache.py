"""Text encodings remembered by their token ids, so a prompt encoded once is not encoded again.

Every render with classifier-free guidance encodes the prompt and the empty negative prompt; the
negative is the same text every time, and evaluation and resumed runs render the same prompts again.
The text encoders' weights never change inside arpo, so the same ids on the same device give the same
output: remembering the last few outputs saves their forwards without changing any image.

Ids alone do not always decide the output: PH2P swaps rows of the token-embedding lookup for its
optimised vectors with a forward hook, then encodes placeholder ids. So the memory answers only where
it is switched on (`TextToImage.generate_many`, on its own thread, for the pipeline's call), never with
gradients, and never while the embedding lookup carries a hook.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

REMEMBERED_ENCODINGS = 16
"""Outputs kept per encoder. SDXL's second encoder returns every layer's hidden states (about 6 MB in
half precision for one prompt), so the number stays small."""


_switched_on = threading.local()


@contextmanager
def encodings_remembered() -> Iterator[None]:
    """While inside, on this thread, remembered encoders answer repeated calls from memory."""
    _switched_on.depth = getattr(_switched_on, "depth", 0) + 1
    try:
        yield
    finally:
        _switched_on.depth -= 1


class RememberedEncodings:
    """The last few outputs of one text encoder's forward, by token ids, mask, options and device."""

    def __init__(self, forward: Callable[..., Any], lookup: torch.nn.Module | None, size: int = REMEMBERED_ENCODINGS) -> None:
        self._forward = forward
        self._lookup = lookup
        self._size = size
        self._outputs: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, input_ids: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        key = _key(input_ids, args, kwargs) if self._answers_now() else None
        if key is None:
            return self._forward(input_ids, *args, **kwargs)
        with self._lock:
            if key in self._outputs:
                self._outputs.move_to_end(key)
                self.hits += 1
                return self._outputs[key]
        output = self._forward(input_ids, *args, **kwargs)
        with self._lock:
            self.misses += 1
            self._outputs[key] = output
            while len(self._outputs) > self._size:
                self._outputs.popitem(last=False)
        return output

    def _answers_now(self) -> bool:
        hooked = self._lookup is not None and bool(self._lookup._forward_hooks or self._lookup._forward_pre_hooks)
        return getattr(_switched_on, "depth", 0) > 0 and not torch.is_grad_enabled() and not hooked


def remember_encodings(text_encoder: torch.nn.Module) -> RememberedEncodings:
    """Make `text_encoder`'s forward answer repeated calls from memory inside `encodings_remembered`;
    returns the memory (its counters say how often it answered). Calling it again changes nothing."""
    current = text_encoder.forward
    if isinstance(current, RememberedEncodings):
        return current
    # The module object stays as it is (its config, dtype and device are read by the pipelines); only
    # the forward its __call__ reaches is wrapped, as an attribute of this instance.
    lookup = text_encoder.get_input_embeddings() if hasattr(text_encoder, "get_input_embeddings") else None
    remembered = RememberedEncodings(current, lookup)
    text_encoder.forward = remembered
    return remembered


def _key(input_ids: torch.Tensor | None, args: tuple, kwargs: dict) -> tuple | None:
    """What decides the output, as a hashable value; None when a call is not simple token ids (embedded
    inputs, tensors among the options), which then always runs."""
    if not isinstance(input_ids, torch.Tensor) or args:
        return None
    options = []
    for name, value in sorted(kwargs.items()):
        if isinstance(value, torch.Tensor):
            if name != "attention_mask":
                return None
            value = _tensor_key(value)
        elif not isinstance(value, (bool, int, float, str, type(None))):
            return None
        options.append((name, value))
    return (_tensor_key(input_ids), tuple(options))


def _tensor_key(tensor: torch.Tensor) -> tuple:
    held = tensor.detach()
    return (str(held.device), held.dtype, tuple(held.shape), held.cpu().numpy().tobytes())
