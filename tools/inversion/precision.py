"""Gradients through frozen half-precision models onto float32 variables, without silent damage.

On CUDA the pipelines load in float16 (`tools/devices.py`), and `--dtype bfloat16` is common too. The
inverters differentiate through those frozen models with respect to a few variables of their own (soft
prompt slots, EDITOR's text embedding). Those variables, their optimiser state and the loss stay
float32 (a "master copy"); only the frozen models compute in half precision, their inputs cast at the
boundary, so an update is never rounded to half precision before it is applied.

float16 has a narrow exponent range: small gradients flush to zero on the way back through the model
and large ones overflow. So, for float16 models only, the loss is multiplied by a scale before the
backward pass and the gradients divided by it afterwards (dynamic loss scaling: the scale halves after
an overflow and doubles again after a run of clean steps). bfloat16 shares float32's exponent range and
needs no scale. Whatever the dtype, a gradient that is not finite is never applied: the step is skipped,
a warning is logged, and the step's trajectory record says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

SKIPPED_NON_FINITE = "non-finite gradient"
"""The trajectory's `skipped` detail for a step whose gradient was not applied."""

_INITIAL_FLOAT16_SCALE = 2.0**16
_GROWTH_INTERVAL = 50  # clean steps before the scale may double again
_MIN_SCALE = 1.0


class NonFiniteGradient(Exception):
    """Raised inside an optimiser's closure to abandon a step whose gradient is not finite."""


class GradientGuard:
    """Loss scaling for float16 models and the finite-gradient check every inverter step passes."""

    def __init__(self, model_dtype: torch.dtype, method: str):
        self.method = method
        self.scaling = model_dtype == torch.float16
        self.scale = _INITIAL_FLOAT16_SCALE if self.scaling else 1.0
        self.skipped = 0
        self._clean_steps = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The float32 loss times the current scale: what to call backward on."""
        return loss.float() * self.scale

    def unscale_(self, gradients: Iterable[torch.Tensor | None]) -> bool:
        """Divide gradients by the scale in place; True when every one is finite."""
        finite = True
        for gradient in gradients:
            if gradient is None:
                continue
            if self.scale != 1.0:
                gradient.div_(self.scale)
            finite = finite and bool(torch.isfinite(gradient).all())
        return finite

    def backward(self, loss: torch.Tensor, variables: Iterable[torch.Tensor]) -> bool:
        """Scaled backward pass, then unscaled gradients on `variables`; True when they and the loss
        are finite (only then may the step be applied)."""
        self.scaled(loss).backward()
        return self.unscale_(variable.grad for variable in variables) and bool(torch.isfinite(loss))

    def gradient(self, loss: torch.Tensor, variable: torch.Tensor) -> torch.Tensor | None:
        """The unscaled gradient of `loss` with respect to `variable` (left out of `.grad`), or None
        when it or the loss is not finite."""
        (gradient,) = torch.autograd.grad(self.scaled(loss), [variable])
        finite = self.unscale_([gradient]) and bool(torch.isfinite(loss))
        return gradient if finite else None

    def applied(self) -> None:
        """A step's update went through: after enough of those in a row the scale may grow."""
        self._clean_steps += 1
        if self.scaling and self._clean_steps >= _GROWTH_INTERVAL:
            self.scale *= 2.0
            self._clean_steps = 0

    def skip(self, step: int) -> dict[str, str | float]:
        """Record a skipped step: shrink the scale, warn, and return the trajectory details to attach."""
        self.skipped += 1
        self._clean_steps = 0
        if self.scaling:
            self.scale = max(_MIN_SCALE, self.scale / 2.0)
        log.warning("%s step %d: non-finite gradient, update skipped (loss scale now %g)", self.method, step, self.scale)
        return {"skipped": SKIPPED_NON_FINITE, "loss_scale": self.scale}
