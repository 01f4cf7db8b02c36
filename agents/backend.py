"""One chat backend over the `openai` SDK, shared by every brain role.

OpenAI and vLLM's OpenAI-compatible server differ only in base URL, model names and capabilities
(structured output, several images in one message), so a single class covers both. Retries belong to
tenacity alone: the SDK client is built with `max_retries=0` so the two never stack.

Every call, successful or not, leaves a `BrainCallRecord` in the backend's `CallLog`, which is how a
run's cost and latency become known. The API key never leaves `BackendConfig.api_key`: it is kept out
of reprs, records, log lines and error messages.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

import openai
from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from arpo.errors import BrainError, InvalidInputError

Provider = Literal["openai", "vllm"]

DEFAULT_VLLM_BASE_URL = "http://127.0.0.1:8000/v1"

# Servers that cannot do structured output answer 400 with one of these words in the message.
_SCHEMA_REJECTION_WORDS = ("response_format", "json_schema", "guided_json", "structured output")

# Shapes that look like API keys, so that server messages echoing a key are scrubbed too.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}")

_MAX_DETAIL_CHARS = 160


@dataclass(frozen=True)
class BackendConfig:
    """Where a brain lives and what it can do. Two equal configs can share one backend."""

    provider: Provider
    model: str
    base_url: str | None
    api_key: str = field(repr=False)
    timeout_s: float = 120
    max_attempts: int = 5
    json_schema_output: bool = True
    """Send `response_format` with a JSON schema when a caller asks for structured output."""
    multi_image: bool = True
    """The server accepts two images in one message (vLLM needs `--limit-mm-per-prompt`)."""
    retry_wait_s: float = 1.0
    """First backoff wait between attempts; doubles each retry, plus up to this much jitter."""
    retry_max_wait_s: float = 20.0
    """Longest single backoff wait."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.timeout_s <= 0:
            raise InvalidInputError(f"the brain timeout must be positive, not {self.timeout_s:g} s")

    def safe_description(self) -> dict[str, Any]:
        """Everything about this backend except its key: what a run's history records."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}

    @property
    def key_variable(self) -> str:
        """The environment variable a person sets to give this provider its key."""
        return "OPENAI_API_KEY" if self.provider == "openai" else "VLLM_API_KEY"

    @classmethod
    def from_provider(
        cls,
        provider: Provider,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> BackendConfig:
        """Build a config with the provider's defaults for base URL and key.

        `openai` needs `OPENAI_API_KEY` (or an explicit key); `vllm` defaults to a local server and
        takes `VLLM_API_KEY` when set (vLLM accepts any key unless started with `--api-key`).
        Extra keyword options (timeout_s, max_attempts, ...) go straight into the config.
        """
        if provider == "openai":
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                raise BrainError(
                    "OPENAI_API_KEY is not set; export it, or pick another brain "
                    "(--brain vllm or --brain offline)"
                )
            return cls(provider="openai", model=model, base_url=base_url, api_key=key, **options)
        if provider == "vllm":
            key = api_key or os.environ.get("VLLM_API_KEY") or "EMPTY"
            url = base_url or DEFAULT_VLLM_BASE_URL
            return cls(provider="vllm", model=model, base_url=url, api_key=key, **options)
        raise InvalidInputError(f"unknown brain provider {provider!r}; use openai or vllm")


class BrainCallRecord(BaseModel):
    """One brain call as the history stores it: who asked, which model, how long, how many tokens."""

    call_id: str
    role: str
    model: str
    provider: str
    started_at: datetime
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int
    ok: bool
    error: str | None = None
    """One line, never containing the key. Set on failure, or when the reply was unusable."""


class BrainReply(BaseModel):
    """The text a brain answered, with what it cost."""

    call_id: str
    text: str
    model: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int


class CallLog:
    """Thread-safe list of call records plus running telemetry for benchmarks.

    `total_wait_s` is the summed wall time callers spent inside `complete()` (compare it with elapsed
    time to see overlap), `total_backoff_s` the part of it spent sleeping between retries, `calls` the
    number of `complete()` calls, `requests` the number of HTTP requests they made, and
    `peak_in_flight` the most calls that were running at the same moment.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[BrainCallRecord] = []
        self.calls = 0
        self.requests = 0
        self.total_wait_s = 0.0
        self.total_backoff_s = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0

    def append(self, record: BrainCallRecord) -> None:
        """Keep one finished call and add its latency to the totals."""
        with self._lock:
            self._records.append(record)
            self.calls += 1
            self.total_wait_s += record.latency_s

    def drain(self) -> list[BrainCallRecord]:
        """Hand over the records gathered so far and forget them (telemetry keeps counting)."""
        with self._lock:
            drained, self._records = self._records, []
            return drained

    def records(self) -> list[BrainCallRecord]:
        """A copy of the records not drained yet."""
        with self._lock:
            return list(self._records)

    def mark_unusable(self, call_id: str, reason: str) -> None:
        """Flag a call whose reply arrived but could not be used (e.g. no phrases in it)."""
        with self._lock:
            for index, record in enumerate(self._records):
                if record.call_id == call_id:
                    self._records[index] = record.model_copy(update={"ok": False, "error": reason})
                    return

    def count_request(self) -> None:
        """Count one HTTP request (an attempt)."""
        with self._lock:
            self.requests += 1

    def add_backoff(self, seconds: float) -> None:
        """Count time slept between attempts."""
        with self._lock:
            self.total_backoff_s += seconds

    @contextmanager
    def tracking_in_flight(self) -> Iterator[None]:
        """Count this call as running while the block runs, and remember the peak."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1


class _TransientFailure(Exception):
    """An attempt failed in a way worth retrying; carries a short, key-free reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Call:
    """One `complete()` call in progress: what to send, and how many requests it has made."""

    messages: list[dict]
    role: str
    json_schema: dict | None
    schema_name: str | None
    temperature: float | None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0


class ChatBackend:
    """Chat completions against one OpenAI-compatible server and model, with retries and a call log."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.call_log = CallLog()
        self._schema_lock = threading.Lock()
        self._schema_supported = config.json_schema_output
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            max_retries=0,
            timeout=config.timeout_s,
        )

    def __repr__(self) -> str:
        return f"ChatBackend({self.config!r})"

    def close(self) -> None:
        """Close the HTTP connections (the backend must not be used afterwards)."""
        self._client.close()

    @property
    def supports_json_schema(self) -> bool:
        """Whether structured output is still being sent (False once the server has rejected it)."""
        with self._schema_lock:
            return self._schema_supported

    def complete(
        self,
        messages: list[dict],
        *,
        role: str,
        json_schema: dict | None = None,
        schema_name: str | None = None,
        temperature: float | None = None,
    ) -> BrainReply:
        """Send one chat request, retrying transient failures; raise BrainError when it fails for good.

        `role` names the asking role (describer, comparer, ...) in records and error messages.
        `json_schema` is sent as a strict `response_format` when the backend supports it; callers
        must still parse the text tolerantly, since some servers ignore it.
        """
        call = _Call(messages, role, json_schema, schema_name, temperature)
        started_at = datetime.now(timezone.utc)
        clock_start = time.monotonic()
        reply: BrainReply | None = None
        error: str | None = None
        with self.call_log.tracking_in_flight():
            try:
                reply = self._complete_with_retries(call)
            except BrainError as exc:
                error = str(exc)
                raise
            except Exception as exc:  # a bug or an SDK surprise: record it, then let it surface
                error = f"{self._who(role)}: unexpected {type(exc).__name__}"
                raise
            finally:
                latency = time.monotonic() - clock_start
                self.call_log.append(self._record(call, started_at, latency, reply, error))
        return reply.model_copy(update={"latency_s": latency, "attempts": call.attempts})

    def _record(
        self,
        call: _Call,
        started_at: datetime,
        latency: float,
        reply: BrainReply | None,
        error: str | None,
    ) -> BrainCallRecord:
        return BrainCallRecord(
            call_id=call.call_id,
            role=call.role,
            model=self.config.model,
            provider=self.config.provider,
            started_at=started_at,
            latency_s=latency,
            prompt_tokens=reply.prompt_tokens if reply else None,
            completion_tokens=reply.completion_tokens if reply else None,
            attempts=call.attempts,
            ok=reply is not None,
            error=None if reply is not None else error,
        )

    def _complete_with_retries(self, call: _Call) -> BrainReply:
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, _TransientFailure)),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=self.config.retry_wait_s,
                max=self.config.retry_max_wait_s,
                jitter=self.config.retry_wait_s,
            ),
            before_sleep=self._note_backoff,
        )
        try:
            return retrying(self._attempt, call)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = last.reason if isinstance(last, _TransientFailure) else "unknown failure"
            raise BrainError(
                f"{self._who(call.role)}: gave up after {call.attempts} attempts: {reason}"
            ) from None

    def _note_backoff(self, retry_state: RetryCallState) -> None:
        if retry_state.next_action is not None:
            self.call_log.add_backoff(retry_state.next_action.sleep)

    def _attempt(self, call: _Call) -> BrainReply:
        """One try; a schema rejection is re-sent at once without the schema inside the same try."""
        use_schema = call.json_schema is not None and self.supports_json_schema
        try:
            return self._send(call, with_schema=use_schema)
        except openai.BadRequestError as exc:
            if not (use_schema and _mentions_schema(exc)):
                raise self._permanent_error(call.role, exc) from None
        with self._schema_lock:
            self._schema_supported = False
        try:
            return self._send(call, with_schema=False)
        except openai.BadRequestError as exc:
            raise self._permanent_error(call.role, exc) from None

    def _send(self, call: _Call, *, with_schema: bool) -> BrainReply:
        """One HTTP request: transient trouble raises _TransientFailure, other API errors BrainError.

        BadRequestError is left to the caller, which decides between schema fallback and failure.
        """
        request: dict[str, Any] = {"model": self.config.model, "messages": call.messages}
        if call.temperature is not None:
            request["temperature"] = call.temperature
        if with_schema:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": call.schema_name or "reply",
                    "schema": call.json_schema,
                    "strict": True,
                },
            }
        call.attempts += 1
        self.call_log.count_request()
        try:
            completion = self._client.chat.completions.create(**request)
        except openai.RateLimitError as exc:
            if exc.code == "insufficient_quota":
                raise BrainError(
                    f"{self._who(call.role)}: quota exhausted (insufficient_quota); check the "
                    "account's plan and billing"
                ) from None
            raise _TransientFailure("429 rate limited") from None
        except openai.APITimeoutError:
            raise _TransientFailure(f"timed out after {self.config.timeout_s:g} s") from None
        except openai.APIConnectionError:
            raise _TransientFailure(f"cannot connect to {self._where()}") from None
        except openai.BadRequestError:
            raise
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                raise _TransientFailure(f"{exc.status_code} server error") from None
            raise self._permanent_error(call.role, exc) from None
        except openai.OpenAIError as exc:
            raise BrainError(
                f"{self._who(call.role)}: unexpected reply ({type(exc).__name__})"
            ) from None
        return self._reply_from(completion, call.call_id)

    def _reply_from(self, completion: Any, call_id: str) -> BrainReply:
        """The reply text and usage; an empty reply is transient (worth asking again)."""
        choices = getattr(completion, "choices", None) or []
        text = choices[0].message.content if choices and choices[0].message else None
        if not text or not text.strip():
            raise _TransientFailure("empty reply")
        usage = getattr(completion, "usage", None)
        return BrainReply(
            call_id=call_id,
            text=text,
            model=getattr(completion, "model", None) or self.config.model,
            latency_s=0.0,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            attempts=0,
        )

    def _permanent_error(self, role: str, exc: openai.APIStatusError) -> BrainError:
        """Translate a non-retryable API error into a one-line, key-free BrainError."""
        who = self._who(role)
        if isinstance(exc, openai.AuthenticationError):
            return BrainError(f"{who}: authentication failed (check {self.config.key_variable})")
        if isinstance(exc, openai.PermissionDeniedError):
            return BrainError(
                f"{who}: permission denied (the key in {self.config.key_variable} "
                "cannot use this model)"
            )
        if isinstance(exc, openai.NotFoundError):
            return BrainError(
                f"{who}: not found at {self._where()} (check the model name and base URL)"
            )
        detail = self._scrub(_server_message(exc))
        suffix = f": {detail}" if detail else ""
        if isinstance(exc, openai.BadRequestError):
            return BrainError(f"{who}: request rejected (400){suffix}")
        return BrainError(f"{who}: request failed ({exc.status_code}){suffix}")

    def _who(self, role: str) -> str:
        return f"{role} brain {self.config.model}"

    def _where(self) -> str:
        return self.config.base_url or "the OpenAI API"

    def _scrub(self, text: str) -> str:
        """One line, bounded, with the key (and anything key-shaped) removed."""
        if self.config.api_key:
            text = text.replace(self.config.api_key, "***")
        text = _KEY_LIKE.sub("***", text)
        text = " ".join(text.split())
        if len(text) > _MAX_DETAIL_CHARS:
            text = text[: _MAX_DETAIL_CHARS - 1] + "…"
        return text


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own explanation, without the SDK's 'Error code: ... - {body}' wrapping."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str):
        return body
    return ""


def _mentions_schema(exc: openai.BadRequestError) -> bool:
    text = f"{_server_message(exc)} {exc.param or ''}".lower()
    return any(word in text for word in _SCHEMA_REJECTION_WORDS)
