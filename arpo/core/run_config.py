"""The configuration of one run: what the person asked for, stored with the run so it can resume.

It names models and brains only. API keys are read from the environment when brains are built and
are never part of this object, so they cannot reach the history or the checkpoints.

Each set of names a run can choose from (brain providers, frameworks, schedulers, precisions, reply
formats, inversion methods) is a `Literal` here and a tuple beside it, and nowhere else: the CLI's
help, the web UI's menus and the tools that map a name to a class all read these.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, Field

BrainProvider = Literal["openai", "vllm", "offline"]
"""Who plays a brain role: OpenAI, an OpenAI-compatible server (vLLM, llama.cpp, Ollama...), or no
model at all (the phrase banks)."""
BRAIN_PROVIDERS: tuple[str, ...] = get_args(BrainProvider)

Framework = Literal["vanilla", "enhanced"]
"""Vanilla: one two-image VLM comparison. Enhanced: the VLM describes each image, an LLM compares."""
FRAMEWORKS: tuple[str, ...] = get_args(Framework)

StructuredOutput = Literal["auto", "json-schema", "json-object", "off"]
"""How JSON replies are asked for: auto negotiates json_schema > json_object > plain text."""
STRUCTURED_OUTPUT_MODES: tuple[str, ...] = get_args(StructuredOutput)

SchedulerName = Literal["ddim", "pndm", "euler", "euler-a", "dpm++"]
"""Noise schedulers by the names people use; `arpo.tools.schedulers` maps each to its class."""
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)

DtypeName = Literal["float32", "float16", "bfloat16"]
"""Precisions models can load in, as torch names them."""
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
DTYPE_ALIASES: dict[str, DtypeName] = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
"""The short forms people also type for a precision."""

InversionMethod = Literal["pez", "ph2p", "editor", "regressor"]
"""The inversion methods, usable on their own (`method`) or to write the loop's first prompt (`init`)."""
INVERSION_METHODS: tuple[str, ...] = get_args(InversionMethod)

RefineTool = Literal["ph2p", "editor", "regressor"]
"""The inversion methods that can refine the loop's current prompt, starting from it."""
REFINE_TOOLS: tuple[str, ...] = get_args(RefineTool)
RefineChoice = Literal["none", "auto", RefineTool]
"""When the loop refines: never, with the first tool that suits the models (auto), or with one tool."""
REFINE_CHOICES: tuple[str, ...] = ("none", "auto", *REFINE_TOOLS)


REFINE_STEPS = 40
"""Optimisation steps of one refinement when `refine_steps` does not say (a refinement polishes a
prompt that is already good; the inversion methods' own defaults start from nothing)."""


def as_typed_name(name: object) -> object:
    """A name as people type it, trimmed and lower-cased ("PNDM " is "pndm"); empty text is no choice."""
    return (name.strip().lower() or None) if isinstance(name, str) else name


def dtype_choice(name: object) -> object:
    """A precision as a run stores it: "fp16" and " Float16 " both read as "float16"; empty is None.

    Anything that is no precision is returned as typed, for validation to refuse with the choices."""
    key = as_typed_name(name)
    if not isinstance(key, str):
        return key
    key = key.removeprefix("torch.")
    return DTYPE_ALIASES.get(key, key)


Scheduler = Annotated[SchedulerName | None, BeforeValidator(as_typed_name)]
"""A scheduler field: a name from SCHEDULER_NAMES in any case, or None for the model's own."""
Dtype = Annotated[DtypeName | None, BeforeValidator(dtype_choice)]
"""A precision field: a name from DTYPE_NAMES or a short form (fp16, bf16), or None for automatic."""


class BrainChoice(BaseModel):
    """Which backend plays one brain role, and how every request to it is made."""

    provider: BrainProvider = "offline"
    model: str | None = None
    """Model name on that backend; None takes the provider's default."""
    base_url: str | None = None
    """Server URL for vLLM (or an OpenAI-compatible proxy); None takes the provider's default."""
    structured_output: StructuredOutput = "auto"
    """How JSON replies are asked for: auto negotiates json_schema > json_object > plain text."""
    max_tokens: int | None = Field(None, ge=1)
    """Reply budget of every request of this brain; None takes each role's default."""
    temperature: float | None = Field(None, ge=0, le=2)
    """Sampling temperature sent with every request; None takes the backend's default (0.2)."""
    seed: int | None = None
    """Sampling seed sent with every request; None takes the backend's default (0)."""

    @property
    def is_offline(self) -> bool:
        return self.provider == "offline"


class RunConfig(BaseModel):
    """Everything that determines a run, besides the reference image."""

    models: str = "sd15"
    """Model stack: tiny, sd15, sdxl, pixart, or a diffusers model id or local path."""
    clip_model: str | None = None
    """open_clip model for selection and scoring, as NAME/PRETRAINED; None takes the stack's default."""
    captioner: str | None = None
    """Captioner model id for the initial prompt; None takes the stack's default."""
    device: str | None = None
    """Torch device; None picks the best available."""
    scheduler: Scheduler = None
    """Noise scheduler of the text-to-image model; None keeps the model's own (PNDM for SD 1.5, Euler
    for SDXL, DPM-Solver++ for PixArt-α)."""
    dtype: Dtype = None
    """Precision the three models load in; None: float16 on CUDA, float32 elsewhere."""
    low_vram: bool = False
    """Keep at most one large model on the accelerator at a time; the others wait in CPU memory."""
    compile: bool = False
    """Compile the denoiser with torch.compile (the first render waits for the compilation)."""
    channels_last: bool = False
    """Keep the denoiser's and the VAE's convolution weights in channels-last memory order."""
    vlm: BrainChoice = Field(default_factory=BrainChoice)
    llm: BrainChoice = Field(default_factory=BrainChoice)
    framework: Framework = "vanilla"
    steps: int = Field(10, ge=0, le=1000)
    seed: int = 0
    initial_prompt: str | None = None
    """Start from this prompt instead of a caption (or another `init` method)."""
    method: Literal["arpo", InversionMethod] = "arpo"
    """What recovers the prompt: the ARPO loop, or one inversion method on its own (no brain)."""
    init: Literal["caption", InversionMethod] = "caption"
    """How the ARPO loop writes its initial prompt P0 when `initial_prompt` is not given."""
    inversion_steps: int | None = Field(None, ge=1)
    """Optimisation steps for an inversion method (None: the method's default)."""
    inversion_seconds: float | None = Field(None, gt=0)
    """Wall-time limit for an inversion method (None: no limit)."""
    editor_inverter: str | None = None
    """Trained embedding-to-text inverter (folder) for EDITOR; None: EDITOR's training-free search."""
    regressor: str | None = None
    """Regressor checkpoint (file or folder) for `init`/`method` "regressor"."""
    prompt_bank: str | None = None
    """File of prompts the regressor's embedding is matched against (None: the checkpoint's own bank)."""
    refine: RefineChoice = "auto"
    """When a proposal round keeps nothing, refine the best prompt with an inversion tool before stopping."""
    refine_steps: int | None = Field(None, ge=1)
    """Optimisation steps per refinement call (None: REFINE_STEPS)."""
    max_seconds: float | None = Field(None, gt=0)
    """Stop cleanly once the run's own work (not a person's pauses) has taken this long."""
    max_brain_tokens: int | None = Field(None, ge=1)
    """Stop cleanly once the brains' prompt and completion tokens add up to this many."""
    agent: bool = False
    """Let the LLM drive the run through function-calling tools instead of the fixed loop."""

