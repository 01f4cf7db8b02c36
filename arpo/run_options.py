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

Models = Annotated[Optional[str], typer.Option(help="sd15 | sdxl | pixart | a diffusers id or path; tiny | tiny-sdxl | tiny-pixart: tiny random models of the same families, offline.")]
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
Scheduler = Annotated[Optional[str], typer.Option(help="Noise scheduler of the text-to-image model: ddim | pndm | euler | euler-a | dpm++ (default: the model's own: PNDM for SD 1.5, Euler for SDXL, DPM-Solver++ for PixArt).")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="Precision of the text-to-image model, scorer and captioner: float32 | float16 | bfloat16 (default: float16 on CUDA, float32 elsewhere).")]
StructuredOutput = Annotated[Optional[str], typer.Option(help="How JSON replies are asked for: auto (try json_schema, fall back to json_object, then plain text; remembered per server and model) | json-schema | json-object | off (default: auto).")]
VlmStructuredOutput = Annotated[Optional[str], typer.Option(help="--structured-output for the VLM role only.")]
LlmStructuredOutput = Annotated[Optional[str], typer.Option(help="--structured-output for the LLM role only.")]
MaxTokens = Annotated[Optional[int], typer.Option(help="Reply budget (max_tokens) of every brain request (default per role: proposer 300, differ and describer 400, comparer 500).")]
VlmMaxTokens = Annotated[Optional[int], typer.Option(help="--max-tokens for the VLM role only.")]
LlmMaxTokens = Annotated[Optional[int], typer.Option(help="--max-tokens for the LLM role only.")]
Temperature = Annotated[Optional[float], typer.Option(help="Sampling temperature sent to the brains (default: 0.2).")]
BrainSeed = Annotated[Optional[int], typer.Option(help="Sampling seed sent to the brains, for repeatable replies where the server honours it (default: 0).")]
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
    scheduler: str | None = None,
    dtype: str | None = None,
    structured_output: str | None = None,
    vlm_structured_output: str | None = None,
    llm_structured_output: str | None = None,
    max_tokens: int | None = None,
    vlm_max_tokens: int | None = None,
    llm_max_tokens: int | None = None,
    temperature: float | None = None,
    brain_seed: int | None = None,
    **fields: Any,
):
    """A RunConfig from flags (None = not given) over settings; a bad value is one InvalidInputError.

    `fields` are further RunConfig fields taken as they are (clip_model, initial_prompt, method, ...).
    """
    from arpo.graphs.run_config import BrainChoice, RunConfig

    default_brain = brain or settings.brain
    shared_url = base_url or settings.base_url
    shared_format = structured_output or settings.structured_output
    shared_budget = max_tokens if max_tokens is not None else settings.max_tokens
    sampling = {
        "temperature": temperature if temperature is not None else settings.temperature,
        "seed": brain_seed if brain_seed is not None else settings.brain_seed,
    }
    try:
        return RunConfig(
            models=models or settings.models,
            vlm=BrainChoice(
                provider=vlm_brain or default_brain, model=vlm or settings.vlm, base_url=vlm_base_url or shared_url,
                structured_output=vlm_structured_output or shared_format,
                max_tokens=vlm_max_tokens if vlm_max_tokens is not None else shared_budget, **sampling,
            ),
            llm=BrainChoice(
                provider=llm_brain or default_brain, model=llm or settings.llm, base_url=llm_base_url or shared_url,
                structured_output=llm_structured_output or shared_format,
                max_tokens=llm_max_tokens if llm_max_tokens is not None else shared_budget, **sampling,
            ),
            framework=framework or settings.framework,
            steps=steps if steps is not None else settings.steps,
            seed=seed if seed is not None else settings.seed,
            scheduler=_lower(scheduler) or settings.scheduler,
            dtype=_dtype_name(dtype) or settings.dtype,
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


def _lower(name: str | None) -> str | None:
    return name.strip().lower() if name else None


def _dtype_name(name: str | None) -> str | None:
    """--dtype as RunConfig stores it; the short forms people type (fp16, bf16) are read too."""
    if not name:
        return None
    from arpo.tools.devices import DTYPE_NAMES, dtype_name, parse_dtype

    try:
        return dtype_name(parse_dtype(name))
    except InvalidInputError:
        raise InvalidInputError(f"invalid value for --dtype: '{name}'; choose one of: {', '.join(DTYPE_NAMES)}") from None
