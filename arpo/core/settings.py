"""The one way a run configuration is made: built-in defaults, then ARPO_* settings, then what the
person chose (flags, the web UI's form, Studio's context panel).

The choices come in three groups, each a small model whose fields are None until chosen:
`ModelOptions` (which models, on what device, in what precision), `BrainOptions` (which brains, where,
and how every request is made) and `LoopOptions` (framework, steps, seed). The CLI turns each field
into a flag of the same name (`clip_model` is `--clip-model`) with its description as the help, so a
flag is declared once for every command that takes its group. `ArpoSettings.run_config` merges them.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import (
    BRAIN_PROVIDERS,
    DTYPE_NAMES,
    FRAMEWORKS,
    SCHEDULER_NAMES,
    REFINE_CHOICES,
    REFINE_STEPS,
    BrainChoice,
    BrainProvider,
    Dtype,
    Framework,
    RefineChoice,
    RunConfig,
    Scheduler,
    StructuredOutput,
    as_typed_name,
)

Provider = Annotated[BrainProvider | None, BeforeValidator(as_typed_name)]
ReplyFormat = Annotated[StructuredOutput | None, BeforeValidator(as_typed_name)]
LoopFramework = Annotated[Framework | None, BeforeValidator(as_typed_name)]


def _one_of(names: tuple[str, ...]) -> str:
    return " | ".join(names)


class ChosenOptions(BaseModel):
    """Base of the option groups: fields left None were not chosen."""

    @classmethod
    def chosen(cls, **values: Any) -> Self:
        """The group a person's choices make; a bad value is one InvalidInputError naming its flag."""
        try:
            return cls(**values)
        except ValidationError as error:
            raise InvalidInputError(validation_problem(error)) from None


class ModelOptions(ChosenOptions):
    """Which models a run uses, where and in what precision; None: the setting or default applies."""

    models: str | None = Field(None, description=(
        "sd15 | sdxl | pixart | a diffusers id or path; tiny | tiny-sdxl | tiny-pixart: tiny random models "
        "of the same families, offline."))
    clip_model: str | None = Field(None, description="open_clip NAME/PRETRAINED for scoring (default: ViT-L-14/openai).")
    captioner: str | None = Field(None, description=(
        "Captioner id for the initial prompt (default: Salesforce/blip2-opt-2.7b)."))
    device: str | None = Field(None, description="Torch device (default: best available).")
    scheduler: Scheduler = Field(None, description=(
        f"Noise scheduler of the text-to-image model: {_one_of(SCHEDULER_NAMES)} (default: the model's own: "
        "PNDM for SD 1.5, Euler for SDXL, DPM-Solver++ for PixArt)."))
    dtype: Dtype = Field(None, description=(
        f"Precision of the text-to-image model, scorer and captioner: {_one_of(DTYPE_NAMES)} "
        "(default: float16 on CUDA, float32 elsewhere)."))
    low_vram: bool | None = Field(None, description=(
        "Keep at most one large model (generator, scorer, captioner, inverter) on the accelerator at a time, "
        "the others in CPU memory, with diffusers' model offload and VAE tiling: for 8 GB cards, and slower."))
    compile: bool | None = Field(None, description=(
        "Compile the text-to-image denoiser with torch.compile: faster renders on a GPU once compiled; "
        "the first render (and PH2P's or EDITOR's first step) waits for the compilation, minutes on a CPU."))
    channels_last: bool | None = Field(None, description=(
        "Keep the denoiser's and VAE's convolution weights in channels-last memory order (often faster "
        "on GPUs with tensor cores)."))


class BrainOptions(ChosenOptions):
    """Which brains play the two roles, where they are served and how every request is made."""

    brain: Provider = Field(None, description=f"Backend of both brain roles: {_one_of(BRAIN_PROVIDERS)}.")
    vlm_brain: Provider = Field(None, description="Backend of the VLM role only.")
    llm_brain: Provider = Field(None, description="Backend of the LLM role only.")
    base_url: str | None = Field(None, description=(
        "vLLM/OpenAI-compatible server for both roles (default for vllm: http://127.0.0.1:8000/v1)."))
    vlm_base_url: str | None = Field(None, description="Server of the VLM role only.")
    llm_base_url: str | None = Field(None, description="Server of the LLM role only.")
    vlm: str | None = Field(None, description="VLM model name (compares or describes images).")
    llm: str | None = Field(None, description="LLM model name (lists differences, proposes phrases).")
    structured_output: ReplyFormat = Field(None, description=(
        "How JSON replies are asked for: auto (try json_schema, fall back to json_object, then plain text; "
        "remembered per server and model) | json-schema | json-object | off (default: auto)."))
    vlm_structured_output: ReplyFormat = Field(None, description="--structured-output for the VLM role only.")
    llm_structured_output: ReplyFormat = Field(None, description="--structured-output for the LLM role only.")
    max_tokens: int | None = Field(None, ge=1, description=(
        "Reply budget (max_tokens) of every brain request (default per role: proposer 300, differ and "
        "describer 400, comparer 500)."))
    vlm_max_tokens: int | None = Field(None, ge=1, description="--max-tokens for the VLM role only.")
    llm_max_tokens: int | None = Field(None, ge=1, description="--max-tokens for the LLM role only.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature sent to the brains (default: 0.2).")
    brain_seed: int | None = Field(None, description=(
        "Sampling seed sent to the brains, for repeatable replies where the server honours it (default: 0)."))


class LoopOptions(ChosenOptions):
    """How the loop searches: its framework, how many rounds, with which noise seed."""

    framework: LoopFramework = Field(None, description=(
        f"{FRAMEWORKS[0]} (one two-image VLM call) | {FRAMEWORKS[1]} (describe both images, then compare)."))
    steps: int | None = Field(None, ge=0, le=1000, description=(
        "Proposal rounds before the run stops; in a session, the most one 'run N' goes without asking "
        "(default: 10)."))
    seed: int | None = Field(None, description="Noise seed for every generation (default: 0).")
    refine: Annotated[RefineChoice | None, BeforeValidator(as_typed_name)] = Field(None, description=(
        "When a proposal round keeps nothing, refine the best prompt before stopping: "
        f"{_one_of(REFINE_CHOICES)} (default: auto, the first tool that suits the models)."))
    refine_steps: int | None = Field(None, ge=1, description=(
        f"Optimisation steps per refinement call (default: {REFINE_STEPS})."))
    max_seconds: float | None = Field(None, gt=0, description=(
        "Stop cleanly once the run's own work has taken this many seconds (pauses for a person do not count)."))
    max_brain_tokens: int | None = Field(None, ge=1, description=(
        "Stop cleanly once the brains' prompt and completion tokens reach this many."))
    agent: bool | None = Field(None, description=(
        "Let the LLM brain drive the run with function-calling tools (generate, propose, select, refine, edit, "
        "finish) instead of the fixed loop."))


class HistoryOptions(ChosenOptions):
    """Where the history lives: its database (runs, checkpoints, batches, evaluations) and its images."""

    db: str | None = Field(None, description=(
        "History database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, where checkpoints, batches "
        "and evaluations go too (default: sqlite under $ARPO_HOME or ~/.local/share/arpo)."))
    images: str | None = Field(None, description=(
        "Folder of the image store (default: beside a SQLite database, else $ARPO_HOME/images)."))


OptionGroup = ModelOptions | BrainOptions | LoopOptions
OPTION_GROUPS: tuple[type[ChosenOptions], ...] = (ModelOptions, BrainOptions, LoopOptions, HistoryOptions)


class ArpoSettings(BaseSettings):
    """Per-user defaults from ARPO_* environment variables (ARPO_MODELS, ARPO_BRAIN, ARPO_DB, ...).

    API keys are not settings: they stay in OPENAI_API_KEY / VLLM_API_KEY and are read only when a
    brain is built.
    """

    model_config = SettingsConfigDict(env_prefix="ARPO_", extra="ignore")

    db: str | None = None
    """History database URL (default: sqlite file under ARPO_HOME, ~/.local/share/arpo)."""
    images: str | None = None
    """Image store folder (default: beside a SQLite database, else ARPO_HOME/images)."""
    models: str = "sd15"
    clip_model: str | None = None
    captioner: str | None = None
    device: str | None = None
    scheduler: Scheduler = None
    """Noise scheduler of the text-to-image model (None: the model's own)."""
    dtype: Dtype = None
    """Precision of the models (None: float16 on CUDA, float32 elsewhere)."""
    low_vram: bool = False
    """One large model on the accelerator at a time (ARPO_LOW_VRAM=1)."""
    compile: bool = False
    """torch.compile of the denoiser (ARPO_COMPILE=1)."""
    channels_last: bool = False
    """Channels-last convolution weights (ARPO_CHANNELS_LAST=1)."""
    brain: Annotated[BrainProvider, BeforeValidator(as_typed_name)] = "openai"
    base_url: str | None = None
    vlm: str | None = None
    llm: str | None = None
    structured_output: Annotated[StructuredOutput, BeforeValidator(as_typed_name)] = "auto"
    max_tokens: int | None = Field(None, ge=1)
    """Reply budget of every brain request (None: each role's default)."""
    temperature: float | None = Field(None, ge=0, le=2)
    """Brain sampling temperature (None: the backend's default, 0.2)."""
    brain_seed: int | None = None
    """Brain sampling seed (None: the backend's default, 0)."""
    framework: Annotated[Framework, BeforeValidator(as_typed_name)] = "vanilla"
    steps: int = Field(10, ge=0, le=1000)
    seed: int = 0
    refine: Annotated[RefineChoice, BeforeValidator(as_typed_name)] = "auto"
    refine_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    max_brain_tokens: int | None = Field(None, ge=1)
    agent: bool = False

    @classmethod
    def read(cls, **fallbacks: Any) -> ArpoSettings:
        """The settings from the environment; a bad ARPO_* value is one InvalidInputError.

        `fallbacks` replace built-in defaults where no variable is set (Studio falls back to tiny
        models and no brain, so that it runs anywhere offline).
        """
        try:
            settings = cls()
        except ValidationError as error:
            raise InvalidInputError(validation_problem(error, prefix="ARPO_")) from None
        unset = {name: value for name, value in fallbacks.items() if name not in settings.model_fields_set}
        return settings.model_copy(update=unset)

    def run_config(self, *chosen: OptionGroup, **fields: Any) -> RunConfig:
        """The run configuration: the chosen option groups over these settings over the defaults.

        `fields` are further RunConfig fields taken as they are (initial_prompt, method, ...); a bad
        value anywhere is one InvalidInputError naming the flag.
        """
        picked: dict[str, Any] = {}
        for group in chosen:
            picked |= group.model_dump(exclude_none=True)

        def pick(name: str, setting: str | None = None) -> Any:
            return picked[name] if name in picked else getattr(self, setting or name)

        values = {
            name: pick(name)
            for name in _PICKED
        }
        values |= {name: value for name, value in fields.items() if value is not None}
        try:
            return RunConfig(vlm=self._brain_choice("vlm", picked), llm=self._brain_choice("llm", picked), **values)
        except ValidationError as error:
            raise InvalidInputError(validation_problem(error)) from None

    def history_location(self, chosen: HistoryOptions | None = None) -> HistoryOptions:
        """Where the history is: the chosen database and image folder, else the settings' (None: arpo's
        defaults)."""
        chosen = chosen or HistoryOptions()
        return HistoryOptions(db=chosen.db or self.db, images=chosen.images or self.images)

    def _brain_choice(self, role: str, picked: dict[str, Any]) -> BrainChoice:
        """One role's brain: its own option, else the option for both roles, else the setting."""

        def pick(name: str, setting: str) -> Any:
            for key in (f"{role}_{name}", name):
                if key in picked:
                    return picked[key]
            return getattr(self, setting)

        return BrainChoice(
            provider=pick("brain", "brain"), model=picked.get(role, getattr(self, role)),
            base_url=pick("base_url", "base_url"), structured_output=pick("structured_output", "structured_output"),
            max_tokens=pick("max_tokens", "max_tokens"), temperature=picked.get("temperature", self.temperature),
            seed=picked.get("brain_seed", self.brain_seed),
        )


_PICKED = (
    "models", "clip_model", "captioner", "device", "scheduler", "dtype", "low_vram", "compile", "channels_last",
    "framework", "steps", "seed", "refine", "refine_steps", "max_seconds", "max_brain_tokens", "agent",
)
"""The RunConfig fields that come straight from an option of the same name, or its setting."""

# Where a RunConfig field inside a brain choice comes from, as a flag.
_BRAIN_CHOICE_FLAGS = {"provider": "brain", "model": "", "base_url": "base-url", "structured_output": "structured-output",
                       "max_tokens": "max-tokens", "temperature": "temperature", "seed": "brain-seed"}


def option_flag(location: tuple[str | int, ...]) -> str:
    """The flag that sets a field, from where pydantic found a problem: ("clip_model",) is --clip-model,
    ("vlm", "max_tokens") is --vlm-max-tokens, ("llm", "model") is --llm."""
    names = [str(part) for part in location]
    if len(names) == 2 and names[0] in ("vlm", "llm") and names[1] in _BRAIN_CHOICE_FLAGS:
        role, field_name = names
        if field_name in ("temperature", "seed"):
            return f"--{_BRAIN_CHOICE_FLAGS[field_name]}"
        return "-".join(part for part in (f"--{role}", _BRAIN_CHOICE_FLAGS[field_name]) if part)
    return "--" + "-".join(names).replace("_", "-")


def validation_problem(error: ValidationError, *, prefix: str = "") -> str:
    """The first problem pydantic found, as one line naming the flag (or the ARPO_* variable)."""
    first = error.errors()[0]
    if prefix:
        where = prefix + "_".join(str(part) for part in first["loc"]).upper()
    else:
        where = option_flag(tuple(first["loc"]))
    return f"invalid value for {where}: {first['msg']}"

