"""Plain records the graph writes into the history and the CLI reads back out of it."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from arpo.core.phrases import DroppedPhrase
from arpo.core.run_config import REFINE_TOOLS

RunStatus = Literal["running", "paused", "finished", "failed", "interrupted"]


class CandidateRecord(BaseModel):
    """A phrase proposed in one iteration and what greedy selection made of it."""

    phrase: str
    score: float | None = None
    selected: bool = False
    reason: str = "not scored"


class ProposalRecord(BaseModel):
    """Where an iteration's candidates came from and what was dropped before selection saw them."""

    source: str = "llm"
    """llm, offline (no LLM configured) or offline-fallback (the LLM's replies held nothing usable)."""
    dropped: list[DroppedPhrase] = Field(default_factory=list)


class InversionStepRecord(BaseModel):
    """One step of a prompt-inversion method's trajectory, as stored in the history."""

    method: str
    step: int
    loss: float | None = None
    prompt: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] | None = None


COMPRESS_TOOL = "compress"
"""The tool name a compression of the prompt is kept under."""


class ToolCallRecord(BaseModel):
    """One call of a tool, as the history keeps it: a refinement, a compression, an agent's step."""

    tool: str
    """ph2p, editor or regressor (refinements), compress, or the name of an agent's tool."""
    caller: Literal["loop", "agent", "person"] = "loop"
    iteration_index: int | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    proposed: list[str] = Field(default_factory=list)
    """Candidate phrases the tool produced."""
    kept: list[str] = Field(default_factory=list)
    """Those that selection kept."""
    outcome: dict[str, Any] | None = None
    """What else came of the call (a compression: before, after and their scores; an agent step: its result)."""
    error: str | None = None
    created_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """What an iteration shows of it: the tool, what it proposed and what was kept, and how long."""
        return {"tool": self.tool, "proposed": self.proposed, "kept": self.kept, "seconds": self.seconds,
                "caller": self.caller, "error": self.error}

    @property
    def is_agent_step(self) -> bool:
        """Whether this is one of an agent's own steps (a call it made, or its hand-over), rather than
        the refinement or compression one of those steps ran."""
        return self.caller == "agent" and self.tool not in (*REFINE_TOOLS, COMPRESS_TOOL)


class IterationRecord(BaseModel):
    """Everything one pass of the loop produced, as stored in the history."""

    index: int
    prompt: str
    seen_prompt: str
    token_count: int
    token_budget: int
    generated_sha256: str
    clip_t: float
    clip_i: float
    differences: str | None = None
    candidates: list[CandidateRecord] = Field(default_factory=list)
    note: str | None = None
    wall_seconds: float = 0.0
    proposal: ProposalRecord | None = None
    """Source and dropped phrases of this iteration's proposal (None before anything was proposed)."""
    refinement: dict[str, Any] | None = None
    """The refinement made when this iteration's proposal kept nothing: {tool, proposed, kept, seconds}
    (read from the run's tool calls; not written with the iteration)."""
    compression: dict[str, Any] | None = None
    """The compression tried when the prompt filled its budget: {before, after, before_score,
    after_score, kept} (read from the run's tool calls)."""

    @property
    def selected(self) -> list[str]:
        """The phrases chosen this iteration, in the order they joined the prompt."""
        return [candidate.phrase for candidate in self.candidates if candidate.selected]


class SessionTurnRecord(BaseModel):
    """A person's reply in a session: continue, stop, feedback, an edited prompt, pins or bans."""

    position: int
    iteration_index: int
    action: str
    text: str | None = None
    phrases: list[str] | None = None
    shown: dict[str, Any] | None = None
    """What the person saw when replying (prompt, scores, candidates), so no shown round is lost."""
    created_at: datetime | None = None


class RenderRecord(BaseModel):
    """A novel image made from an edited recovered prompt."""

    id: int | None = None
    source_prompt: str
    content: str
    style: str
    prompt: str
    edit: str
    seed: int
    model: str
    image_sha256: str
    created_at: datetime | None = None


class RunSummary(BaseModel):
    """One line of the run list."""

    id: str
    created_at: datetime
    status: str
    kind: str
    reference_name: str
    best_prompt: str | None = None
    best_clip_i: float | None = None
    iterations: int = 0
    stopped_because: str | None = None


class RunDetail(RunSummary):
    """A run with its configuration, every iteration and what its brain calls cost."""

    config: dict[str, Any] = Field(default_factory=dict)
    reference_sha256: str
    last_prompt: str | None = None
    error: str | None = None
    iterations_detail: list[IterationRecord] = Field(default_factory=list)
    brain_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
