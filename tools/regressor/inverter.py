"""The regressor as a prompt-inversion method: predict the prompt's embedding, return the nearest prompt.

`RegressorInverter` follows the shared `PromptInverter` interface, so `--method regressor` runs it on
its own and `--init regressor` lets it write the ARPO loop's first prompt. It takes one forward pass,
so the step budget does not apply; the single recorded step carries the best match. Several checkpoints
form an ensemble (the median of their embeddings), optionally followed by a kernel adapter (DAKL).
Under --low-vram each checkpoint rests in CPU memory and takes its turn on the accelerator for its
forward pass, like every other model (tools/accelerator_turns.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arpo.core.errors import InvalidInputError
from arpo.tools.inversion.base import InversionBudget, InversionResult, InversionStep, OnStep

if TYPE_CHECKING:
    from PIL import Image

    from arpo.core.run_config import RunConfig
    from arpo.tools.accelerator_turns import AcceleratorTurns, Seat
    from arpo.tools.model_stack import ModelStack
    from arpo.tools.regressor.checkpoint import LoadedRegressor
    from arpo.tools.regressor.kernel_adaptation import KernelAdapter
    from arpo.tools.regressor.prompt_bank import PromptBank, PromptMatch

DEFAULT_TOP_K = 5
METHOD_NAME = "regressor"


class RegressorInverter:
    """Recovers a prompt with a trained regressor and a prompt bank (the checkpoint's own by default)."""

    name = METHOD_NAME

    def __init__(
        self,
        regressors: Sequence[LoadedRegressor],
        bank: PromptBank,
        *,
        bank_source: str = "checkpoint",
        top_k: int = DEFAULT_TOP_K,
        adapter: KernelAdapter | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ):
        if not regressors:
            raise InvalidInputError("The regressor method needs at least one checkpoint.")
        spaces = {loaded.config.target_space for loaded in regressors}
        if len(spaces) > 1:
            names = ", ".join(sorted(spaces))
            raise InvalidInputError(f"Regressor checkpoints predict into different spaces: {names}.")
        self.regressors = list(regressors)
        self.bank = bank
        self.bank_source = bank_source
        self.top_k = max(1, top_k)
        self.adapter = adapter
        self.turns, self._seats = _seats(self.regressors, low_vram, turns)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoints: str | Path | Sequence[str | Path],
        prompt_bank: str | Path | None = None,
        *,
        device: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        adapter: str | Path | None = None,
        low_vram: bool = False,
    ) -> "RegressorInverter":
        """Load one checkpoint (or several: an ensemble whose median embedding is used) and a bank:
        `prompt_bank` (a file of prompts) or the first checkpoint's own. `low_vram`: the checkpoints
        rest in CPU memory between predictions."""
        from arpo.tools.regressor.checkpoint import load_checkpoint
        from arpo.tools.regressor.kernel_adaptation import KernelAdapter

        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        # Only the first checkpoint's own bank can be used, and only when no other bank is given.
        loaded = [
            load_checkpoint(path, device=device, with_bank=index == 0 and prompt_bank is None)
            for index, path in enumerate(paths)
        ]
        bank, source = load_bank(loaded[0], prompt_bank, device=device)
        return cls(
            loaded,
            bank,
            bank_source=source,
            top_k=top_k,
            adapter=KernelAdapter.load(adapter) if adapter is not None else None,
            low_vram=low_vram,
        )

    @classmethod
    def from_config(cls, config: RunConfig) -> "RegressorInverter":
        """Built from a run's `regressor` (checkpoint), `prompt_bank`, `device` and `low_vram` fields."""
        if not config.regressor:
            raise InvalidInputError("The regressor method needs a checkpoint: pass --regressor CKPT.")
        return cls.from_checkpoint(config.regressor, config.prompt_bank, device=config.device, low_vram=config.low_vram)

    def matches(self, image: Image.Image, k: int | None = None) -> list[PromptMatch]:
        """The bank's `k` prompts nearest to the predicted embedding of `image`, best first."""
        return self.bank.top_k(self.embed([image.convert("RGB")])[0], k or self.top_k)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[n, d] predicted embeddings: one model's, or the ensemble's median; kernel-adapted if set."""
        from arpo.tools.regressor.kernel_adaptation import ensemble_median

        predictions = []
        for loaded, seat in zip(self.regressors, self._seats):
            with self.turns.turn(seat):
                predictions.append(loaded.model.predict(images))
        embedding = predictions[0] if len(predictions) == 1 else ensemble_median(predictions)
        return self.adapter.transform(embedding) if self.adapter is not None else embedding

    def invert(
        self,
        reference: Image.Image,
        models: ModelStack | None = None,
        *,
        seed: int = 0,
        budget: InversionBudget | None = None,
        on_step: OnStep | None = None,
    ) -> InversionResult:
        started = time.perf_counter()
        found = self.matches(reference)
        best = found[0]
        seconds = time.perf_counter() - started
        step = InversionStep(
            step=1, loss=1.0 - best.similarity, prompt=best.prompt, seconds=seconds,
            details={"similarity": best.similarity},
        )
        if on_step is not None:
            on_step(step)
        config = self.regressors[0].config
        return InversionResult(
            method=METHOD_NAME,
            prompt=best.prompt,
            score=best.similarity,
            steps=[step],
            seconds=seconds,
            details={
                "top_k": [{"prompt": match.prompt, "similarity": match.similarity} for match in found],
                "checkpoints": [str(loaded.folder) for loaded in self.regressors],
                "backbone": config.backbone,
                "target_space": config.target_space,
                "prompt_bank": self.bank_source,
                "prompt_bank_size": len(self.bank),
                "kernel_adapted": self.adapter is not None,
            },
        )


def _seats(
    regressors: Sequence[LoadedRegressor], low_vram: bool, turns: AcceleratorTurns | None
) -> tuple[AcceleratorTurns, list[Seat]]:
    """The checkpoints' turns (their device's) and one seat each; under --low-vram they go home now."""
    from arpo.tools.accelerator_turns import HOME, Seat, Stay, turns_on

    turns = turns or turns_on(regressors[0].model.device)  # where they were loaded, before any goes home
    stay = Stay.UNTIL_NEEDED if low_vram else Stay.RESIDENT
    seats = []
    for index, loaded in enumerate(regressors):
        modules = [loaded.model, *loaded.model.backbone.frozen_modules()]
        seat = Seat(
            f"regressor {index}",
            stay=stay,
            bring=lambda device, modules=modules: [module.to(device) for module in modules],
            send_home=lambda modules=modules: [module.to(HOME) for module in modules],
        )
        if low_vram:
            seat.send_home()
        seats.append(seat)
    return turns, seats


def load_bank(loaded: LoadedRegressor, prompt_bank: str | Path | None, *, device: str | None = None):
    """(bank, description): the prompts in `prompt_bank` embedded in the checkpoint's space, or its own bank."""
    from arpo.tools.regressor.prompt_bank import PromptBank
    from arpo.tools.regressor.sentence_space import load_sentence_space

    if prompt_bank is not None:
        bank = PromptBank.from_file(
            prompt_bank, loaded.config.target_space, lambda name: load_sentence_space(name, device=device)
        )
        return bank, str(prompt_bank)
    if loaded.bank is None or not len(loaded.bank):
        raise InvalidInputError(f"Checkpoint '{loaded.folder}' carries no prompt bank; pass --prompt-bank FILE.")
    return loaded.bank, "checkpoint"
