"""What every prompt-inversion method shares: its budget, its trajectory, its result, its interface.

An inverter turns a reference image into a prompt without a brain (PEZ, PH2P, EDITOR, the
regressor). The ARPO loop uses one to write its initial prompt (`--init`), `arpo invert --method`
runs one on its own, and the evaluation compares them, all through `PromptInverter.invert`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.model_stack import ModelStack


class InversionBudget(BaseModel):
    """When an inverter must stop: after `max_steps` optimisation steps or `max_seconds`, whichever first.

    None means the method's own default (steps) or no limit (seconds).
    """

    max_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)


@dataclass
class InversionStep:
    """One recorded step of an inverter's trajectory."""

    step: int
    loss: float | None = None
    """The objective the method minimises, at this step (lower is better)."""
    prompt: str | None = None
    """The prompt the method would return if it stopped here (projected, decoded)."""
    seconds: float = 0.0
    """Wall time since the inversion started."""
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific plain JSON values (similarity, learning rate, ...)."""


@dataclass
class InversionResult:
    """What an inverter returns: the prompt, its score by the method's own yardstick, and its path."""

    method: str
    prompt: str
    score: float | None
    """The method's selection score of `prompt` (e.g. CLIP similarity for PEZ); higher is better."""
    steps: list[InversionStep] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    """Plain JSON values worth keeping with the run (settings used, token ids, candidates)."""
    rendered: Any = None
    """`prompt` rendered with the seed `invert` was given, when the method rendered it while choosing
    (a PIL image), so whoever shows the winner with that seed need not render it again; else None."""


OnStep = Callable[[InversionStep], None]
"""Called as each step is recorded (progress display, history writes)."""


class PromptInverter(Protocol):
    """A method that recovers a prompt for a reference image with the models of a stack."""

    name: str

    def invert(
        self,
        reference: Image.Image,
        models: ModelStack,
        *,
        seed: int = 0,
        budget: InversionBudget | None = None,
        on_step: OnStep | None = None,
    ) -> InversionResult: ...
