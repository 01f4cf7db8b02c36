"""The command-line options that choose models and brains, shared by every command that starts runs.

`invert`, `session`, `batch`, `eval` and the web UI all build a `RunConfig` the same way: flags
override ARPO_* settings, which override the defaults. Declaring the options once here keeps their
names, help and precedence identical everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from arpo.errors import InvalidInputError
from arpo.settings import ArpoSettings

Models = Annotated[Optional[str], typer.Option(help="tiny | sd15 | sdxl | pixart | a diffusers id or path.")]
Brain = Annotated[Optional[str], typer.Option(help="Backend of both brain roles: openai | vllm | offline.")]
VlmBrain = Annotated[Optional[str], typer.Option(help="Backend of the VLM role only.")]
LlmBrain = Annotated[Optional[str], typer.Option(help="Backend of the LLM role only.")]
BaseUrl = Annotated[Optional[str], typer.Option(help="vLLM/OpenAI-compatible server for both roles (default for vllm: http://127.0.0.1:8000/v1).")]
VlmBaseUrl = Annotated[Optional[str], typer.Option(help="Server of the VLM role only.")]
LlmBaseUrl = Annotated[Optional[str], typer.Option(help="Server of the LLM role only.")]
Vlm = Annotated[Optional[str], typer.Option(help="VLM model name (compares or describes images).")]
Llm = Annotated[Optional[str], typer.Option(help="LLM model name (lists differences, proposes phrases).")]
Framework = Annotated[Optional[str], typer.Option(help="vanilla (one two-image VLM call) | enhanced (describe, then compare).")]
Steps = Annotated[Optional[int], typer.Option(help="Maximum proposal rounds (default: 10).")]
Seed = Annotated[Optional[int], typer.Option(help="Noise seed for every generation (default: 0).")]
ClipModel = Annotated[Optional[str], typer.Option(help="open_clip NAME/PRETRAINED for scoring (default: ViT-L-14/openai).")]
CaptionerModel = Annotated[Optional[str], typer.Option("--captioner", help="Captioner id for the initial prompt (default: Salesforce/blip2-opt-2.7b).")]
Device = Annotated[Optional[str], typer.Option(help="Torch device (default: best available).")]
Database = Annotated[Optional[str], typer.Option("--db", help="History database URL (default: sqlite under $ARPO_HOME or ~/.local/share/arpo).")]


def build_run_config(
    settings: ArpoSettings,
    *,
    models: str | None = None,
    brain: str | None = None,
    vlm_brain: str | None = None,
    llm_brain: str | None = None,
    base_url: str | None = None,
    vlm_base_url: str | None = None,
    llm_base_url: str | None = None,
    vlm: str | None = None,
    llm: str | None = None,
    framework: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    **fields: Any,
):
    """A RunConfig from flags (None = not given) over settings; a bad value is one InvalidInputError.

    `fields` are further RunConfig fields taken as they are (clip_model, initial_prompt, method, ...).
    """
    from arpo.graphs.run_config import BrainChoice, RunConfig

    default_brain = brain or settings.brain
    shared_url = base_url or settings.base_url
    try:
        return RunConfig(
            models=models or settings.models,
            vlm=BrainChoice(provider=vlm_brain or default_brain, model=vlm or settings.vlm, base_url=vlm_base_url or shared_url),
            llm=BrainChoice(provider=llm_brain or default_brain, model=llm or settings.llm, base_url=llm_base_url or shared_url),
            framework=framework or settings.framework,
            steps=steps if steps is not None else settings.steps,
            seed=seed if seed is not None else settings.seed,
            **fields,
        )
    except ValueError as error:
        raise InvalidInputError(first_validation_problem(error)) from None


def first_validation_problem(error: ValueError) -> str:
    """The first problem pydantic found, as one line naming the field."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"invalid value for {where}: {first['msg']}"
    return str(error)
