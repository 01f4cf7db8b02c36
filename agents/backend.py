"""One chat backend over the `openai` SDK, shared by every brain role.

OpenAI, vLLM, llama.cpp's server, llama-cpp-python, Ollama and LM Studio all speak the same chat
completions protocol but differ in what they accept, so capabilities are negotiated, not assumed:

- Structured output: in `auto` mode a request that wants JSON first asks for a `json_schema`
  response format; a refusal that names the response format or schema (whatever its status code:
  llama-cpp-python answers HTTP 500) drops to `json_object`, then to plain text read by the tolerant
  parser. What a server+model accepted is remembered in a `FormatMemory` for the rest of the run, and
  every request's format is recorded with it.
- Function calling: a request may offer OpenAI `tools` (agent mode); the reply's tool calls come
  back beside its text. A server that refuses tools says so in its body (vLLM without
  `--enable-auto-tool-choice`, Ollama's "does not support tools", llama.cpp's server without
  `--jinja`); there is no weaker way to ask, so that is one BrainError naming the server's fix.
- Every request carries `max_tokens` (per role, see `ROLE_MAX_TOKENS`), `temperature` and `seed`, so a
  weak model cannot babble until its context is full and identical runs ask identical questions. A
  model that refuses one of them by name (OpenAI's reasoning models) gets `max_completion_tokens`
  instead of `max_tokens`, or no temperature, from then on.

Retries belong to tenacity alone: the SDK client is built with `max_retries=0` so the two never stack.
Whether a failure is worth retrying is read from the reply body, not the status alone (a 500 whose
body is a validation error will fail the same way again). An empty reply is asked again once only:
the same request with the same seed gets the same nothing, which points at the server's chat template.
Every HTTP request, failed ones included, leaves one `BrainCallRecord` with its status, error and the
token counts the server reported, kept until the caller takes it (`take_calls`, the `Brain` protocol of
agents/brain.py, which this backend implements).

A reply is only as good as what the model read: servers whose chat format cannot read a message sent
as a list of parts (llama-cpp-python's text formats, which is every format of a text-only model) drop
it without a word, and the model answers an empty prompt. When the server's prompt token count is far
below what the request's text alone must cost, the call fails for good and says so (`_unread_prompt`).

The SDK call blocks inside httpx, out of reach of Ctrl-C, so each request runs on a daemon thread
while the caller waits in short, interruptible steps: Ctrl-C stops every waiting call within a fraction
of a second (see `_Interrupts`), and an abandoned request's connection closes with the process.

The API key never leaves `BackendConfig.api_key`: it is kept out of reprs, records, log lines and
error messages.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import openai
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from arpo.agents.brain import BrainReply, CallLog, FunctionCall
from arpo.core.brain_calls import BrainCallRecord, ResponseFormat
from arpo.core.errors import BrainError, InvalidInputError
from arpo.core.loop_activity import LOOP_ACTIVITY
from arpo.core.run_config import STRUCTURED_OUTPUT_MODES, StructuredOutput

if TYPE_CHECKING:
    import httpx2

Provider = Literal["openai", "vllm"]
"""The brain providers that are a chat server (`offline` is none)."""

_FORMATS_BY_STRENGTH: tuple[ResponseFormat, ...] = ("json_schema", "json_object", "text")
_FIXED_FORMAT: dict[str, ResponseFormat] = {
    "json-schema": "json_schema", "json-object": "json_object", "off": "text",
}

DEFAULT_VLLM_BASE_URL = "http://127.0.0.1:8000/v1"

DEFAULT_TEMPERATURE = 0.2
"""Low enough that a run is repeatable on servers that honour `seed`, high enough that a re-asked
question can get a different answer."""
DEFAULT_BRAIN_SEED = 0

ROLE_MAX_TOKENS: dict[str, int] = {
    "proposer": 300,
    "prompt_writer": 200,
    "splitter": 300,
    "compressor": 250,
    "agent": 400,
    "inverter": 300,
    "differ": 400,
    "describer": 400,
    "comparer": 500,
}
"""Reply budget per role when the config sets none: a phrase list needs a few hundred tokens, a
description or a comparison a little more. Small models otherwise write until their context is full."""
DEFAULT_MAX_TOKENS = 512
"""Reply budget of a role not listed in ROLE_MAX_TOKENS."""

# Words by which a server's refusal names the response format (any status code).
_FORMAT_REFUSAL_WORDS = (
    "response_format", "response format", "json_schema", "json schema", "json_object",
    "guided_json", "structured output", "grammar",
)
# Words by which a 5xx body shows an error that a retry cannot fix: request validation, a type error
# in a chat template, an unsupported feature. llama-cpp-python reports all of these as HTTP 500.
_DETERMINISTIC_FAILURE_WORDS = (
    "validation error", "input should be", "field required", "extra inputs are not permitted",
    "not supported", "unsupported", "can only concatenate", "typeerror", "keyerror", "valueerror",
    "must be", "invalid", "template",
)
_TRANSIENT_STATUSES = (408, 409, 425, 502, 503, 504)
# Words by which a server's refusal names function calling: vLLM started without
# --enable-auto-tool-choice ('"auto" tool choice requires --enable-auto-tool-choice and
# --tool-call-parser to be set'), Ollama ("... does not support tools"), llama.cpp's server without
# --jinja ("tools param requires --jinja flag").
_TOOL_REFUSAL_WORDS = (
    "tool choice", "tool_choice", "auto-tool-choice", "tool-call-parser", "tool call parser",
    "support tools", "tools param", "tools are not supported", "function calling",
)
TOOL_CALLING_FIX = (
    "agent mode needs a server that calls tools: start vLLM with --enable-auto-tool-choice "
    "--tool-call-parser hermes (llama.cpp's server with --jinja), or run without --agent"
)

# OpenAI's reasoning models refuse some sampling parameters by name, e.g. "Unsupported parameter:
# 'max_tokens' ... Use 'max_completion_tokens' instead." or "Unsupported value: 'temperature' ...".
_UNSUPPORTED_PARAMETER = re.compile(r"unsupported (?:parameter|value): '(\w+)'", re.IGNORECASE)
_ADJUSTABLE_PARAMETERS = ("max_tokens", "temperature", "seed")

# Shapes that look like API keys, so that server messages echoing a key are scrubbed too.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}")
# One entry of a pydantic/FastAPI validation error printed as a Python dict.
_VALIDATION_ENTRY = re.compile(r"\{(?:[^{}]|\{[^{}]*\})*?'msg':(?:[^{}]|\{[^{}]*\})*\}")

_MAX_DETAIL_CHARS = 200

_EMPTY_REPLY_RETRIES = 1
"""An empty reply is asked again this many times (a glitch passes); the same request, seed and
temperature again would only get the same nothing."""
_MAX_CHARS_PER_TOKEN = 6
"""No tokenizer writes English prose in fewer tokens than one per six characters (most need one per
three or four), so a prompt counted below characters / 6 was not read whole by the model."""
_LEAST_JUDGED_PROMPT_TOKENS = 20
"""Texts shorter than this many tokens (by the measure above) are not judged: too little to tell."""
_POLL_S = 0.05
"""How often a waiting call looks for Ctrl-C when it is not on the main thread."""
_DEADLINE_GRACE_S = 5.0
"""Extra wait beyond the SDK timeout before a silent request is abandoned anyway."""


@dataclass(frozen=True)
class BackendConfig:
    """Where a brain lives and what it can do. Two equal configs can share one backend."""

    provider: Provider
    model: str
    base_url: str | None
    api_key: str = field(repr=False)
    timeout_s: float = 120
    max_attempts: int = 5
    structured_output: StructuredOutput = "auto"
    """How a caller's wish for JSON is sent: auto negotiates json_schema > json_object > text."""
    max_tokens: int | None = None
    """Reply budget of every request; None takes the asking role's default (ROLE_MAX_TOKENS)."""
    temperature: float = DEFAULT_TEMPERATURE
    seed: int | None = DEFAULT_BRAIN_SEED
    """Sent with every request (servers that honour it answer identical requests identically)."""
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
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise InvalidInputError(
                f"unknown structured output {self.structured_output!r}; choose "
                + ", ".join(STRUCTURED_OUTPUT_MODES)
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            raise InvalidInputError(f"the temperature must be between 0 and 2, not {self.temperature:g}")

    def safe_description(self) -> dict[str, Any]:
        """Everything about this backend except its key: what a run's history records."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}

    @property
    def key_variable(self) -> str:
        """The environment variable a person sets to give this provider its key."""
        return "OPENAI_API_KEY" if self.provider == "openai" else "VLLM_API_KEY"

    @property
    def server(self) -> str:
        """Where requests go, as records and the format memory name it."""
        return self.base_url or "https://api.openai.com/v1"

    def max_tokens_for(self, role: str) -> int:
        """The reply budget a request of `role` carries."""
        if self.max_tokens is not None:
            return self.max_tokens
        return ROLE_MAX_TOKENS.get(role, DEFAULT_MAX_TOKENS)

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


class FormatMemory:
    """The strongest response format each server+model has not refused, shared by a run's backends.

    Two backends on one server and model (the VLM and LLM roles with different budgets, say) learn
    from each other's refusals, so a refused format is never asked for twice in a run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._strongest: dict[tuple[str, str], int] = {}

    def usable(self, server: str, model: str) -> ResponseFormat:
        """The strongest format not refused yet by this server and model."""
        with self._lock:
            return _FORMATS_BY_STRENGTH[self._strongest.get((server, model), 0)]

    def refused(self, server: str, model: str, refused: ResponseFormat) -> ResponseFormat:
        """Note a refusal of `refused`; return the next weaker format to try."""
        weaker = min(_FORMATS_BY_STRENGTH.index(refused) + 1, len(_FORMATS_BY_STRENGTH) - 1)
        with self._lock:
            key = (server, model)
            self._strongest[key] = max(self._strongest.get(key, 0), weaker)
            return _FORMATS_BY_STRENGTH[self._strongest[key]]


class _Interrupts:
    """Ctrl-C reaches only the main thread; this lets calls waiting on other threads see it too.

    A SIGINT handler chained in front of Python's default one bumps a counter before the default
    handler raises KeyboardInterrupt in the main thread; every waiting call compares the counter with
    the value it started with and gives up when it has moved.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self._installed = False

    def bump(self) -> None:
        with self._lock:
            self.count += 1

    def install(self) -> None:
        """Chain the handler in once, from the main thread, only over Python's default handler."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                return
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main interpreter
            return
        self._installed = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.bump()
        signal.default_int_handler(signum, frame)


_INTERRUPTS = _Interrupts()


class _TransientFailure(Exception):
    """An attempt failed in a way worth retrying; carries a short, key-free reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _EmptyReply(_TransientFailure):
    """The model answered nothing; worth asking once more, not more (see _EMPTY_REPLY_RETRIES)."""


class _ParameterRefused(Exception):
    """The model refused one of the sampling parameters by name (see _UNSUPPORTED_PARAMETER)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail


class _FormatRefused(Exception):
    """The server refused the response format a request asked for."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class _Call:
    """One `complete()` call in progress: what to send, and how many attempts it has made."""

    messages: list[dict]
    role: str
    json_schema: dict | None
    schema_name: str | None
    tools: list[dict] | None = None
    tool_choice: str | None = None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    empty_replies: int = 0
    interrupts_at_start: int = field(default_factory=lambda: _INTERRUPTS.count)


@dataclass
class _Outcome:
    """What one HTTP request came to, before it becomes a record."""

    status_code: int | None = None
    error: str | None = None
    reply: BrainReply | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    """What the server reported, kept for the record even when the reply is refused."""


class ChatBackend:
    """A `Brain` (agents/brain.py) over one OpenAI-compatible server and model, with retries and the
    record of every request."""

    def __init__(
        self,
        config: BackendConfig,
        formats: FormatMemory | None = None,
        *,
        http_client: httpx2.Client | None = None,
    ) -> None:
        """`http_client`: what the SDK sends through instead of a connection of its own (the loop
        benchmark answers in process with an `httpx2.MockTransport`); its timeout is the SDK's."""
        self.config = config
        self._calls = CallLog()
        self.formats = formats or FormatMemory()
        self._parameter_lock = threading.Lock()
        self._renamed_parameters: dict[str, str | None] = {}
        """Sampling parameters this model refused: sent under another name, or (None) not at all."""
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            max_retries=0,
            timeout=config.timeout_s,
            http_client=http_client,
        )
        _INTERRUPTS.install()

    def __repr__(self) -> str:
        return f"ChatBackend({self.config!r})"

    def close(self) -> None:
        """Close the HTTP connections (the backend must not be used afterwards)."""
        self._client.close()

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def multi_image(self) -> bool:
        return self.config.multi_image

    def describe(self) -> dict[str, Any]:
        return self.config.safe_description()

    def take_calls(self) -> list[BrainCallRecord]:
        return self._calls.take()

    def flag_reply(self, call_id: str, reason: str) -> None:
        self._calls.flag(call_id, reason)

    def complete(
        self, messages: list[dict], *, role: str, json_schema: dict | None = None, schema_name: str | None = None,
        tools: list[dict] | None = None, tool_choice: str | None = None,
    ) -> BrainReply:
        """Send one chat request, retrying transient failures; raise BrainError when it fails for good.

        `role` names the asking role (describer, comparer, ...) in records and error messages and
        picks its default reply budget. `json_schema` asks for JSON in the strongest response format
        the server accepts; callers must still parse the text tolerantly, since some servers ignore
        it. `tools` (with `tool_choice`) offers OpenAI function tools; the reply's `tool_calls` holds
        what the model called, and a reply with calls but no text is not empty. KeyboardInterrupt
        (Ctrl-C) stops the call within a fraction of a second, on any thread.
        """
        call = _Call(messages, role, json_schema, schema_name, tools, tool_choice)
        clock_start = time.monotonic()
        reply = self._complete_with_retries(call)
        return reply.model_copy(
            update={"latency_s": time.monotonic() - clock_start, "attempts": call.attempts}
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
            sleep=lambda seconds: self._sleep(call, seconds),
        )
        try:
            return retrying(self._attempt, call)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = last.reason if isinstance(last, _TransientFailure) else "unknown failure"
            raise BrainError(
                f"{self._who(call.role)}: gave up after {call.attempts} attempts: {reason}"
            ) from None

    def _sleep(self, call: _Call, seconds: float) -> None:
        """Back off between attempts, giving up at once on Ctrl-C."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _POLL_S))
            self._check_interrupted(call)

    def _attempt(self, call: _Call) -> BrainReply:
        """One attempt. A refused response format is re-sent at once in the next weaker format
        (json_schema > json_object > text) within the same attempt, so it costs no retry."""
        call.attempts += 1
        response_format = self._format_for(wants_json=call.json_schema is not None)
        while True:
            try:
                return self._send(call, response_format)
            except _ParameterRefused as refusal:
                self._adjust_parameter(refusal)
            except _FormatRefused as refusal:
                weaker = self._weaker_format(response_format)
                if weaker is None:
                    raise BrainError(
                        f"{self._who(call.role)}: the server refused response_format "
                        f"{response_format} ({refusal.detail}); try --structured-output auto"
                    ) from None
                response_format = weaker

    def _adjust_parameter(self, refusal: _ParameterRefused) -> None:
        """Send a refused parameter as the server asks (max_tokens as max_completion_tokens when it
        says so), or leave it out, for the rest of this backend's life."""
        replacement = None
        if refusal.name == "max_tokens" and "max_completion_tokens" in refusal.detail:
            replacement = "max_completion_tokens"
        with self._parameter_lock:
            self._renamed_parameters[refusal.name] = replacement

    def _format_for(self, *, wants_json: bool) -> ResponseFormat | None:
        if not wants_json:
            return None
        mode = self.config.structured_output
        if mode != "auto":
            return _FIXED_FORMAT[mode]
        return self.formats.usable(self.config.server, self.config.model)

    def _weaker_format(self, refused: ResponseFormat | None) -> ResponseFormat | None:
        """The format to try after a refusal of `refused`, or None when none may be tried."""
        if refused in (None, "text") or self.config.structured_output != "auto":
            return None
        return self.formats.refused(self.config.server, self.config.model, refused)

    def _send(self, call: _Call, response_format: ResponseFormat | None) -> BrainReply:
        """One HTTP request, recorded whatever happens. Transient trouble raises _TransientFailure,
        a refused response format _FormatRefused, anything else for good BrainError."""
        started_at = datetime.now(timezone.utc)
        clock_start = time.monotonic()
        outcome = _Outcome()
        try:
            try:
                completion = self._post(call, self._request_body(call, response_format))
            except openai.APIStatusError as exc:
                outcome.status_code = exc.status_code
                self._judge_status_error(call, exc, response_format)
            outcome.status_code = 200
            outcome.reply = self._reply_from(completion, call, response_format, outcome)
            return outcome.reply
        except _TransientFailure as failure:
            outcome.error = failure.reason
            raise
        except _FormatRefused as refusal:
            outcome.error = f"response_format {response_format} refused: {refusal.detail}"
            raise
        except _ParameterRefused as refusal:
            outcome.error = f"parameter {refusal.name} refused: {refusal.detail}"
            raise
        except BrainError as error:
            outcome.error = str(error)
            raise
        except KeyboardInterrupt:
            outcome.error = "interrupted (Ctrl-C)"
            raise
        except Exception as exc:  # a bug or an SDK surprise: record it, then let it surface
            outcome.error = f"unexpected {type(exc).__name__}"
            raise
        finally:
            self._calls.append(
                self._record(call, started_at, time.monotonic() - clock_start, response_format, outcome)
            )

    def _request_body(self, call: _Call, response_format: ResponseFormat | None) -> dict[str, Any]:
        config = self.config
        request: dict[str, Any] = {
            "model": config.model,
            "messages": call.messages,
            "max_tokens": config.max_tokens_for(call.role),
            "temperature": config.temperature,
        }
        if config.seed is not None:
            request["seed"] = config.seed
        if call.tools:
            request["tools"] = call.tools
            if call.tool_choice is not None:
                request["tool_choice"] = call.tool_choice
        if response_format == "json_schema":
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": call.schema_name or "reply",
                    "schema": call.json_schema,
                    "strict": True,
                },
            }
        elif response_format == "json_object":
            request["response_format"] = {"type": "json_object"}
        with self._parameter_lock:
            renamed = dict(self._renamed_parameters)
        for name, replacement in renamed.items():
            value = request.pop(name, None)
            if replacement is not None and value is not None:
                request[replacement] = value
        return request

    def _post(self, call: _Call, request: dict[str, Any]) -> Any:
        """The SDK call, run on a daemon thread so the caller can be interrupted while it waits.

        SDK errors other than API status errors become _TransientFailure or BrainError here; an API
        status error is re-raised for `_judge_status_error` to judge from its body.
        """
        result: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                result["completion"] = self._client.chat.completions.create(**request)
            except BaseException as exc:  # handed to the waiting caller
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="arpo-brain-request", daemon=True).start()
        deadline = time.monotonic() + self.config.timeout_s + _DEADLINE_GRACE_S
        try:
            with LOOP_ACTIVITY.waiting():  # the run's background writes may go now
                while not done.wait(_POLL_S):
                    self._check_interrupted(call)
                    if time.monotonic() > deadline:
                        raise _TransientFailure(f"timed out after {self.config.timeout_s:g} s")
        except KeyboardInterrupt:
            _INTERRUPTS.bump()  # so calls waiting on other threads stop too
            raise
        if "error" in result:
            self._raise_sdk_error(call, result["error"])
        return result["completion"]

    def _check_interrupted(self, call: _Call) -> None:
        if _INTERRUPTS.count != call.interrupts_at_start:
            raise KeyboardInterrupt

    def _raise_sdk_error(self, call: _Call, exc: BaseException) -> None:
        if isinstance(exc, openai.APITimeoutError):
            raise _TransientFailure(f"timed out after {self.config.timeout_s:g} s") from None
        if isinstance(exc, openai.APIConnectionError):
            raise _TransientFailure(f"cannot connect to {self._where()}") from None
        if isinstance(exc, openai.APIStatusError):
            raise exc
        if isinstance(exc, openai.OpenAIError):
            raise BrainError(
                f"{self._who(call.role)}: unexpected reply ({type(exc).__name__})"
            ) from None
        raise exc

    def _judge_status_error(
        self, call: _Call, exc: openai.APIStatusError, response_format: ResponseFormat | None
    ) -> None:
        """Judge an HTTP error from its body: raise _FormatRefused, _TransientFailure or BrainError."""
        message = _server_message(exc)
        detail = self._scrub(message)
        status = exc.status_code
        if call.tools and _names_tool_calling(message, exc):
            # Asked again, the server would refuse again: only a restart with its tool flags helps.
            raise BrainError(f"{self._who(call.role)}: the server refused tool calls ({status}: {detail}); "
                             f"{TOOL_CALLING_FIX}") from None
        if response_format not in (None, "text") and _names_response_format(message, exc):
            raise _FormatRefused(f"{status}: {detail}") from None
        refused_parameter = self._refused_parameter(status, message)
        if refused_parameter is not None:
            raise _ParameterRefused(refused_parameter, detail) from None
        if status == 429:
            if _is_quota_exhausted(exc):
                raise BrainError(
                    f"{self._who(call.role)}: quota exhausted (insufficient_quota); check the "
                    "account's plan and billing"
                ) from None
            raise _TransientFailure(_with_detail("429 rate limited", detail)) from None
        if status in _TRANSIENT_STATUSES or (status >= 500 and not _is_deterministic(message)):
            raise _TransientFailure(_with_detail(f"{status} server error", detail)) from None
        raise self._permanent_error(call.role, exc, detail) from None

    def _refused_parameter(self, status: int, message: str) -> str | None:
        """A sampling parameter a 400 names as unsupported and that has not been adjusted yet."""
        match = _UNSUPPORTED_PARAMETER.search(message) if status == 400 else None
        if match is None or match.group(1) not in _ADJUSTABLE_PARAMETERS:
            return None
        with self._parameter_lock:
            return None if match.group(1) in self._renamed_parameters else match.group(1)

    def _reply_from(
        self, completion: Any, call: _Call, response_format: ResponseFormat | None, outcome: _Outcome
    ) -> BrainReply:
        """The reply text and usage (noted on `outcome` first, so a refused reply keeps them).

        A reply to a request the model did not read fails for good; an empty reply is transient once.
        """
        choices = getattr(completion, "choices", None) or []
        message = choices[0].message if choices else None
        text = message.content if message else None
        tool_calls = _function_calls(message)
        usage = getattr(completion, "usage", None)
        outcome.finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
        outcome.prompt_tokens = getattr(usage, "prompt_tokens", None)
        outcome.completion_tokens = getattr(usage, "completion_tokens", None)
        unread = self._unread_prompt(call, usage)
        if unread is not None:
            raise BrainError(unread)
        if (not text or not text.strip()) and not tool_calls:
            self._empty_reply(call, outcome, has_choices=bool(choices))
        return BrainReply(
            call_id=call.call_id,
            text=text or "",
            model=getattr(completion, "model", None) or self.config.model,
            latency_s=0.0,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            attempts=0,
            response_format=response_format,
            finish_reason=outcome.finish_reason,
            tool_calls=tool_calls,
        )

    def _unread_prompt(self, call: _Call, usage: Any) -> str | None:
        """Why the model cannot have read this request, or None when nothing says so.

        Only requests with content sent as parts are judged: those are what servers drop. The count
        the server reported (with any tokens it served from its cache) must reach the text's
        characters / 6; images only add to it, and a prompt cache never removes the new image.
        """
        if not any(isinstance(message.get("content"), list) for message in call.messages):
            return None
        least = _text_chars(call.messages) // _MAX_CHARS_PER_TOKEN
        reported = (getattr(usage, "prompt_tokens", None) or 0) + _cached_tokens(usage)
        if least < _LEAST_JUDGED_PROMPT_TOKENS or reported == 0 or reported >= least:
            return None  # 0: a server that does not count
        summary = (
            f"{self._who(call.role)} at {self._where()} never saw the request: the server counted "
            f"{reported} prompt tokens where its text alone needs {least} or more"
        )
        if _has_images(call.messages):
            return (
                f"{summary}, so the message and its images were dropped (a text-only model, or a chat "
                "format without image support: llama-cpp-python's text formats drop such messages); "
                "serve a vision model there, or use --vlm-brain offline (with --framework vanilla)"
            )
        return (
            f"{summary}; the server's chat format cannot read content sent as a list of parts, "
            "send it as a plain string"
        )

    def _empty_reply(self, call: _Call, outcome: _Outcome, *, has_choices: bool) -> None:
        """Raise for an empty reply: _EmptyReply the first time, BrainError when it comes again."""
        call.empty_replies += 1
        reason = self._empty_reason(call, outcome, has_choices=has_choices)
        if call.empty_replies > _EMPTY_REPLY_RETRIES:
            raise BrainError(f"{self._who(call.role)}: {reason} (asked {call.empty_replies} times)")
        raise _EmptyReply(reason)

    def _empty_reason(self, call: _Call, outcome: _Outcome, *, has_choices: bool) -> str:
        """'empty reply' with what the server said about it and the likely cause."""
        if not has_choices:
            return "empty reply (no choices)"
        prompt = (f"a {outcome.prompt_tokens}-token prompt" if outcome.prompt_tokens
                  else "a prompt of unreported size")
        if outcome.finish_reason == "length":
            budget = self.config.max_tokens_for(call.role)
            return (
                f"empty reply to {prompt}: the whole budget of {budget} tokens went before any text "
                "(a reasoning model thinking?); raise it with --llm-max-tokens or --vlm-max-tokens"
            )
        return (
            f"empty reply to {prompt} (finish_reason {outcome.finish_reason}); the server's chat "
            "template probably does not suit this model (a base model, or the wrong chat format): "
            "check its chat format (llama-cpp-python --chat_format, llama-server --jinja) or serve "
            "an instruct model"
        )

    def _record(
        self,
        call: _Call,
        started_at: datetime,
        latency: float,
        response_format: ResponseFormat | None,
        outcome: _Outcome,
    ) -> BrainCallRecord:
        reply = outcome.reply
        return BrainCallRecord(
            call_id=call.call_id,
            role=call.role,
            model=self.config.model,
            provider=self.config.provider,
            started_at=started_at,
            latency_s=latency,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            attempts=call.attempts,
            ok=reply is not None,
            error=None if reply is not None else (outcome.error or "unknown failure"),
            status_code=outcome.status_code,
            response_format=response_format,
            finish_reason=outcome.finish_reason,
            server=self.config.server,
        )

    def _permanent_error(self, role: str, exc: openai.APIStatusError, detail: str) -> BrainError:
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
            return BrainError(_with_detail(
                f"{who}: not found at {self._where()} (check the model name and base URL)", detail
            ))
        if isinstance(exc, openai.BadRequestError):
            return BrainError(_with_detail(f"{who}: request rejected (400)", detail))
        return BrainError(_with_detail(f"{who}: request failed ({exc.status_code})", detail))

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


def _text_chars(messages: list[dict]) -> int:
    """Characters of text in `messages`, as strings or text parts (images not counted)."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part.get("text") or "") for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return total


def _has_images(messages: list[dict]) -> bool:
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               for message in messages if isinstance(message.get("content"), list)
               for part in message["content"])


def _cached_tokens(usage: Any) -> int:
    """Prompt tokens a server says it served from its cache (some leave them out of prompt_tokens)."""
    details = getattr(usage, "prompt_tokens_details", None)
    if isinstance(details, dict):
        return int(details.get("cached_tokens") or 0)
    return int(getattr(details, "cached_tokens", None) or 0)


def _with_detail(summary: str, detail: str) -> str:
    return f"{summary}: {detail}" if detail else summary


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own explanation, without the SDK's 'Error code: ... - {body}' wrapping.

    The SDK hands over the body's `error` object when there is one (OpenAI, vLLM, Ollama,
    llama-cpp-python) or the whole body (FastAPI's `{"detail": ...}`, old vLLM's flat error).
    A printed pydantic validation error is boiled down to "where: what" per problem.
    """
    body = exc.body
    message = ""
    if isinstance(body, dict):
        candidate = body.get("message", body.get("detail", body.get("error")))
        if isinstance(candidate, dict):
            candidate = candidate.get("message")
        if isinstance(candidate, list):
            candidate = "; ".join(_validation_item(item) for item in candidate)
        message = candidate if isinstance(candidate, str) else ""
    elif isinstance(body, str):
        message = body
    return _condensed_validation(message)


def _validation_item(item: Any) -> str:
    if isinstance(item, dict) and "msg" in item:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        return f"{where}: {item['msg']}" if where else str(item["msg"])
    return str(item)


def _condensed_validation(message: str) -> str:
    """'response_format.type: Input should be ...' for a printed list of pydantic error dicts."""
    entries = _VALIDATION_ENTRY.findall(message)
    readable = []
    for entry in entries:
        try:
            readable.append(_validation_item(ast.literal_eval(entry)))
        except (ValueError, SyntaxError):
            continue
    return "; ".join(readable) if readable else message


def _names_response_format(message: str, exc: openai.APIStatusError) -> bool:
    text = f"{message} {getattr(exc, 'param', None) or ''}".lower()
    return any(word in text for word in _FORMAT_REFUSAL_WORDS)


def _names_tool_calling(message: str, exc: openai.APIStatusError) -> bool:
    text = f"{message} {getattr(exc, 'param', None) or ''}".lower()
    return any(word in text for word in _TOOL_REFUSAL_WORDS)


def _function_calls(message: Any) -> list[FunctionCall]:
    """The function calls of a reply message. A call without an id gets one (its answer must name
    it), and arguments a server sent as an object rather than JSON text are written back as text."""
    calls = []
    for position, tool_call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(tool_call, "function", None)
        if function is None:
            continue  # a custom (non-function) tool call: never offered, so never answered
        arguments = getattr(function, "arguments", None)
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments) if arguments is not None else ""
        calls.append(FunctionCall(id=getattr(tool_call, "id", None) or f"call_{position}",
                                  name=getattr(function, "name", None) or "", arguments=arguments))
    return calls


def _is_deterministic(message: str) -> bool:
    """Whether a 5xx body describes a failure that the same request would meet again."""
    text = message.lower()
    return any(word in text for word in _DETERMINISTIC_FAILURE_WORDS)


def _is_quota_exhausted(exc: openai.APIStatusError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    return "insufficient_quota" in (getattr(exc, "code", None), body.get("code"), body.get("type"))
