"""What one request to a brain cost and how it went: written by the brains, kept by the history."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

ResponseFormat = Literal["json_schema", "json_object", "text"]
"""What one request really asked for (`text`: no response_format sent)."""


class BrainCallRecord(BaseModel):
    """One HTTP request to a brain: who asked, which model, how long, what it cost, how it ended.

    A call that needed retries or a format fallback leaves one record per request, all with the same
    `call_id`; each was really made and may have cost tokens.
    """

    call_id: str | None = None
    role: str
    model: str
    provider: str
    started_at: datetime
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int
    """Which attempt of its call this request was (1 for the first); format fallbacks share one."""
    ok: bool
    error: str | None = None
    """One line, never containing the key. Set on failure, or when the reply was unusable."""
    status_code: int | None = None
    """HTTP status of the reply; None when none came (timeout, connection error, interrupted)."""
    response_format: ResponseFormat | None = None
    """What the request asked for; None when the caller wanted no JSON."""
    finish_reason: str | None = None
    """Why the model stopped ("stop", "length" when it ran out of max_tokens, ...)."""
    server: str | None = None
    iteration_index: int | None = None
    """The loop iteration the call was made for, once the history has filed it (None: the run's start)."""
