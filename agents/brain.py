"""What a role needs from a brain: one interface, whatever answers behind it.

A brain takes chat messages and answers with text (`complete`), and, when it is offered tools,
with the function calls its model asked for; it says which model it is and whether
two images fit in one message, describes itself for the run's history without secrets, and keeps the
record of every request it made until someone takes them (`take_calls`). Roles only ever read
replies, so the one thing they may add to a record is that a reply arrived but was of no use
(`flag_reply`).

`ChatBackend` (agents/backend.py) is the brain behind every real server; tests answer roles with an
in-process fake. Both keep their records in a `CallLog`. Nothing here knows about HTTP, retries or
response formats: those are the backend's business, and a role that needed them would be reaching
into one backend's insides.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pydantic import BaseModel, Field

from arpo.core.brain_calls import BrainCallRecord, ResponseFormat


class FunctionCall(BaseModel):
    """One function call a model asked for in its reply (OpenAI's `tool_calls`)."""

    id: str
    """The call's id, which the answer to it must name (`tool_call_id`)."""
    name: str
    arguments: str
    """The arguments exactly as the model wrote them: meant to be a JSON object, and not always one."""


class BrainReply(BaseModel):
    """The text a brain answered, with what it cost."""

    call_id: str
    """Names this call in the records, so a role can flag the reply (see `Brain.flag_reply`)."""
    text: str
    model: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int
    response_format: ResponseFormat | None = None
    finish_reason: str | None = None
    tool_calls: list[FunctionCall] = Field(default_factory=list)
    """What the model called when the request offered tools (empty otherwise, or when it answered in
    words instead)."""


class Brain(Protocol):
    """A chat model as the roles see it."""

    @property
    def model(self) -> str:
        """The model's name, as error messages and records give it."""
        ...

    @property
    def multi_image(self) -> bool:
        """Whether two images fit in one message (a two-image comparison needs it)."""
        ...

    def complete(self, messages: list[dict], *, role: str, json_schema: dict | None = None,
                 schema_name: str | None = None, tools: list[dict] | None = None,
                 tool_choice: str | None = None) -> BrainReply:
        """Answer `messages` for `role`; raise BrainError when no answer can be had.

        `json_schema` (named `schema_name`) is a wish for JSON of that shape, not a promise: callers
        parse the text tolerantly. `tools` are OpenAI function tools the model may call
        (`tool_choice`: auto, required or none; None leaves it to the server); the calls come back in
        the reply's `tool_calls`, and a caller must expect a reply in words instead.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """What the run's history may keep about this brain: provider, model, settings; never a key."""
        ...

    def take_calls(self) -> list[BrainCallRecord]:
        """The records of the requests made since the last take (failed ones too), and forget them."""
        ...

    def flag_reply(self, call_id: str, reason: str) -> None:
        """Mark the request that answered call `call_id` as failed with `reason`: the reply came, but
        the role could not use it. A call already taken is not found, and nothing happens."""
        ...


class CallLog:
    """The records of a brain's requests, appended as they end (on any thread) and taken by the caller.

    What every brain needs to keep its side of the protocol's record keeping; ChatBackend and the
    tests' fake brain both use it, so a flagged reply reads the same from either.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[BrainCallRecord] = []

    def append(self, record: BrainCallRecord) -> None:
        """Keep the record of one finished request."""
        with self._lock:
            self._records.append(record)

    def take(self) -> list[BrainCallRecord]:
        """Hand over the records gathered so far and forget them."""
        with self._lock:
            taken, self._records = self._records, []
            return taken

    def flag(self, call_id: str, reason: str) -> None:
        """Mark the last request of call `call_id` (the one that answered) failed with `reason`."""
        with self._lock:
            for index in range(len(self._records) - 1, -1, -1):
                record = self._records[index]
                if record.call_id == call_id:
                    self._records[index] = record.model_copy(update={"ok": False, "error": reason})
                    return
