"""A brain that answers in process, for tests of what roles send and how they read replies.

`FakeBrain` implements the `Brain` protocol (agents/brain.py) without HTTP: each role's replies are
scripted in order, every call is kept (`sent`) with the messages exactly as the role built them, and
each answered or failed call leaves a `BrainCallRecord` in the same kind of `CallLog` ChatBackend
keeps, so flagging a reply and taking the records work as they do in a run. Import it directly (tests/ is on sys.path):

    from fake_brain import FakeBrain, phrases_reply
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from arpo.agents.brain import BrainReply, CallLog
from arpo.core.brain_calls import BrainCallRecord


@dataclass(frozen=True)
class SentCall:
    """One `complete()` call as the fake received it."""

    role: str
    messages: list[dict]
    json_schema: dict | None
    schema_name: str | None

    @property
    def text(self) -> str:
        """All text of all messages, joined (images left out), for keyword checks."""
        return "\n".join(text for text, _ in map(_text_and_images, self.messages))

    @property
    def image_urls(self) -> list[str]:
        """The URL of every image part, in order."""
        return [url for _, urls in map(_text_and_images, self.messages) for url in urls]


Reply = str | BaseException | Callable[[SentCall], str]
"""A scripted reply: the text itself, an error to raise, or a function of the call that writes it."""


def phrases_reply(phrases: Iterable[str]) -> str:
    """The proposer's reply in its clean JSON shape."""
    return json.dumps({"phrases": list(phrases)})


class FakeBrain:
    """Scripted replies per role, in order; a call with nothing scripted for its role fails the test.

    `latency_s` is slept inside each call, so a test can tell calls that overlap from calls in turn
    (`peak_in_flight`: the most calls that were running at once).
    """

    def __init__(self, *, model: str = "fake-model", multi_image: bool = True, latency_s: float = 0.0) -> None:
        self.model = model
        self.multi_image = multi_image
        self.latency_s = latency_s
        self.sent: list[SentCall] = []
        self.peak_in_flight = 0
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._calls = CallLog()
        self._in_flight = 0
        self._lock = threading.Lock()

    def script(self, role: str, *replies: Reply) -> FakeBrain:
        """Queue replies for `role`'s next calls."""
        with self._lock:
            self._replies[role].extend(replies)
        return self

    def complete(self, messages: list[dict], *, role: str, json_schema: dict | None = None,
                 schema_name: str | None = None) -> BrainReply:
        call = SentCall(role, messages, json_schema, schema_name)
        started_at, clock = datetime.now(timezone.utc), time.monotonic()
        reply = self._next_reply(call)
        self._enter()
        try:
            time.sleep(self.latency_s)
            if isinstance(reply, BaseException):
                raise reply
            text = reply(call) if callable(reply) else reply
        except BaseException as error:
            self._record(call, started_at, clock, error=str(error) or type(error).__name__)
            raise
        finally:
            self._leave()
        call_id = self._record(call, started_at, clock, error=None)
        return BrainReply(call_id=call_id, text=text, model=self.model, latency_s=time.monotonic() - clock,
                          attempts=1, prompt_tokens=len(call.text) // 4, completion_tokens=len(text) // 4)

    def describe(self) -> dict[str, Any]:
        return {"provider": "fake", "model": self.model, "multi_image": self.multi_image}

    def take_calls(self) -> list[BrainCallRecord]:
        return self._calls.take()

    def flag_reply(self, call_id: str, reason: str) -> None:
        self._calls.flag(call_id, reason)

    def _next_reply(self, call: SentCall) -> Reply:
        with self._lock:
            self.sent.append(call)
            queued = self._replies[call.role]
            if not queued:
                raise AssertionError(f"the fake brain has no reply scripted for a {call.role} call")
            return queued.popleft()

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _record(self, call: SentCall, started_at: datetime, clock: float, *, error: str | None) -> str:
        call_id = uuid.uuid4().hex
        record = BrainCallRecord(
            call_id=call_id, role=call.role, model=self.model, provider="fake", started_at=started_at,
            latency_s=time.monotonic() - clock, attempts=1, ok=error is None, error=error,
        )
        self._calls.append(record)
        return call_id


def _text_and_images(message: dict) -> tuple[str, list[str]]:
    """A message's text and image URLs, whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    parts = [part for part in content or [] if isinstance(part, dict)]
    text = "\n".join(part.get("text", "") for part in parts if part.get("type") == "text")
    return text, [part["image_url"]["url"] for part in parts if part.get("type") == "image_url"]
